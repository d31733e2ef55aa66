"""Resumable uploads: saves complete through dropped connections and through
a server killed with SIGKILL and restarted.

* Connection cuts: the client talks to ckptd through tests/python/_cut_proxy.py,
  which resets each connection after a random number of client->server bytes
  (so cuts land in the middle of UploadBlobs chunks). Each save is one
  ordinary ``Client.save`` call with the client's default retry budget -- the
  test never retries a save itself. Content is verified through a direct
  (uncut) client.
* Server crash: two rank processes save one version; the server is SIGKILLed
  in the middle of their uploads and restarted on the same port and data dir;
  the ranks' save calls complete on their own, and ``last`` never points at
  a partial version.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from _cut_proxy import CutProxy
from _sharded_util import (
    MiB,
    kill_all,
    launch_ranks,
    private_server,
    rank_log,
    read_result,
    shard_state,
    wait_ranks,
    wait_until,
)
from _util import assert_same

import ckptd

# ~96 MiB per save: 12 tensors of 8 MiB (each its own blob, 2 chunks of 4 MiB).
TENSORS = 12
TENSOR_BYTES = 8 * MiB
# Each connection is cut after a uniform random number of upstream bytes in
# this range (a connection carries roughly one stream: ~24 MiB per save).
CUT_RANGE = (2 * MiB, 40 * MiB)
MIN_CUTS = 20
MAX_SAVES = 16
# $CKPTD_CUT_SEED picks another (reproducible) set of cut offsets.
SEED = int(os.environ.get("CKPTD_CUT_SEED", "20240611"))


def _state(base: torch.Tensor, i: int):
    """Save i's state: fresh bytes (nothing dedups against earlier saves)."""
    return {
        "model": {f"layer{k}.weight": (base[k] + i).view(-1, 1024) for k in range(TENSORS)},
        "small": torch.full((100,), float(i)),
        "step": i,
    }


def test_saves_complete_through_connection_cuts(server, run_name, capsys):
    g = torch.Generator().manual_seed(SEED)
    base = torch.randn(TENSORS, TENSOR_BYTES // 4, generator=g)
    direct = ckptd.Client(server.address, timeout=60)
    report = []
    with CutProxy(server.address, cut_range=CUT_RANGE, seed=SEED) as proxy:
        cut_client = ckptd.Client(proxy.address, timeout=60)  # default channels, streams, max_attempts
        saves = 0
        while proxy.cuts < MIN_CUTS and saves < MAX_SAVES:
            state = _state(base, saves)
            cuts_before = proxy.cuts
            started = time.monotonic()
            try:
                info = cut_client.save(run_name, state, step=saves)
            except ckptd.CheckpointError as e:
                pytest.fail(
                    f"save {saves} failed after {proxy.cuts - cuts_before} cuts during it "
                    f"({proxy.cuts} in all, cut offsets {proxy.cut_log}): {e!r}"
                )
            elapsed = time.monotonic() - started
            report.append((saves, proxy.cuts - cuts_before, elapsed, info.uploaded_bytes, info.total_bytes))
            assert info.state == "COMMITTED" and info.step == saves
            assert info.total_bytes == TENSORS * TENSOR_BYTES + 400
            # Verified through a client the proxy does not touch.
            loaded = direct.load(run_name, info.version)
            for k in range(TENSORS):
                key = f"layer{k}.weight"
                assert torch.equal(loaded["model"][key], state["model"][key]), f"save {saves}: {key} differs"
            assert torch.equal(loaded["small"], state["small"]) and loaded["step"] == saves
            del loaded, state
            saves += 1
        cuts, connections = proxy.cuts, proxy.connections
    with capsys.disabled():
        print(f"\n[test_resume] {cuts} connection cuts over {saves} saves of {TENSORS * TENSOR_BYTES >> 20} MiB "
              f"({connections} connections); per save (index, cuts, seconds, uploaded MiB):")
        for i, c, s, up, _total in report:
            print(f"  save {i:2d}: {c:2d} cuts  {s:6.2f} s  uploaded {up / MiB:7.1f} MiB")
    assert cuts >= MIN_CUTS, f"only {cuts} cuts in {saves} saves"
    assert [v.step for v in direct.versions(run_name)] == list(range(saves))


def test_uploaded_bytes_counts_the_bytes_sent_before_a_cut(server, run_name):
    """uploaded_bytes is what travelled: a blob resumed after a cut travelled
    at least once in full (part on the cut stream, the rest on the resumed one)."""
    state = {"w": torch.randn(8 * MiB, generator=torch.Generator().manual_seed(1))}  # one 32 MiB blob
    with CutProxy(server.address, cut_range=(12 * MiB, 12 * MiB), max_cuts=1) as proxy:
        info = ckptd.Client(proxy.address, timeout=60).save(run_name, state)
        assert proxy.cuts == 1
    assert info.state == "COMMITTED" and info.total_bytes == 32 * MiB
    assert torch.equal(ckptd.Client(server.address).load(run_name, info.version)["w"], state["w"])
    assert info.uploaded_bytes >= info.total_bytes, (
        f"uploaded_bytes {info.uploaded_bytes} < total_bytes {info.total_bytes}: "
        "the bytes received before the cut are not counted"
    )
    # It resumed at the durable offset rather than starting over: less than
    # one 4 MiB chunk travelled twice (starting over would re-send >= 8 MiB).
    assert info.uploaded_bytes < info.total_bytes + 4 * MiB, (
        f"uploaded_bytes {info.uploaded_bytes} for {info.total_bytes}: the cut upload started over"
    )


def _tmp_bytes(data_dir: Path) -> int:
    total = 0
    for f in (data_dir / "tmp").glob("blob-*.tmp"):
        try:
            total += f.stat().st_size
        except FileNotFoundError:
            pass
    return total


# How long the server stays down: restarted at once (a supervisor), or after
# 3 s (a slower supervisor / a bigger RocksDB to open).
@pytest.mark.parametrize("downtime", [0.0, 3.0], ids=["restart-at-once", "restart-after-3s"])
def test_two_rank_save_survives_server_kill9_and_restart(tmp_path, run_name, capsys, downtime):
    world = 2
    big = 96 * MiB  # per rank
    srv = private_server(tmp_path / "srv")
    try:
        _kill9_during_two_rank_save(srv, tmp_path, run_name, capsys, downtime, world, big)
    finally:
        srv.stop()


def _kill9_during_two_rank_save(srv, tmp_path, run_name, capsys, downtime, world, big):
    ranks_dir = tmp_path / "ranks"
    ranks_dir.mkdir()
    procs = []
    stop = threading.Event()
    seen = []  # (version, state, shard ranks, world_size) of each new get(run, "last") answer
    bad = []
    unavailable = [0]

    client = ckptd.Client(srv.address, timeout=10)
    for rank in range(world):  # an earlier complete version: `last` exists
        base = client.save(run_name, {"rank": rank, "w": torch.ones(4) * rank}, step=1, rank=rank, world_size=world)
    assert base.state == "COMMITTED"

    def poll_last():
        poller = ckptd.Client(srv.address, timeout=2, max_attempts=1)
        while not stop.is_set():
            try:
                info = poller.get(run_name, "last")
            except (ckptd.UnavailableError, ckptd.DeadlineExceededError):
                unavailable[0] += 1
                time.sleep(0.02)
                continue
            except ckptd.CheckpointError as e:
                bad.append(repr(e))
                continue
            entry = (info.version, info.state, tuple(s.rank for s in info.shards), info.world_size)
            if not seen or seen[-1] != entry:
                seen.append(entry)
            if info.state != "COMMITTED" or len(info.shards) != info.world_size:
                bad.append(entry)
            time.sleep(0.01)

    poller = threading.Thread(target=poll_last, daemon=True)
    poller.start()
    try:
        procs = launch_ranks([srv.address] * world, run_name, 2, ranks_dir, big_bytes=big)
        # Kill once both ranks' uploads are under way (partial blob files on disk).
        wait_until(lambda: all(p.poll() is None for p in procs) and _tmp_bytes(srv.data_dir) >= 16 * MiB,
                   timeout=120, interval=0.002, what="uploads in progress")
        in_flight = _tmp_bytes(srv.data_dir)
        srv.process.kill()
        srv.process.wait()
        killed_at = time.monotonic()
        assert all(p.poll() is None for p in procs), "a rank finished before the kill"
        time.sleep(downtime)
        srv.start()  # same port, same data dir
        restart_seconds = time.monotonic() - killed_at
        wait_ranks(procs, ranks_dir, timeout=120)
        time.sleep(0.2)
    finally:
        stop.set()
        kill_all(procs)
        poller.join(10)

    # `last` only ever named complete versions, also while the ranks retried.
    assert not bad, f"get(run, 'last') returned partial versions or errors: {bad}"
    results = [read_result(ranks_dir, r) for r in range(world)]
    for r, res in enumerate(results):
        assert res is not None and res["ok"], (
            f"rank {r} failed after the server was down {downtime:.1f} s: {res}\n{rank_log(ranks_dir, r)}"
        )
    version = results[0]["version"]
    assert results[1]["version"] == version
    assert sorted(res["state"] for res in results) == ["COMMITTED", "PENDING"]

    info = client.get(run_name, "last")
    assert info.version == version and info.state == "COMMITTED"
    assert info.world_size == world and [s.rank for s in info.shards] == [0, 1]
    for r in range(world):
        assert_same(client.load(run_name, version, rank=r), shard_state(r, big_bytes=big))
    assert {v for v, *_ in seen} <= {base.version, version}, seen
    assert [v for v, *_ in seen] == sorted(v for v, *_ in seen), seen
    assert seen[-1][0] == version
    with capsys.disabled():
        print(f"\n[test_resume] down {downtime:.0f} s: kill -9 with {in_flight / MiB:.0f} MiB of partial blobs on disk; "
              f"restarted in {restart_seconds:.2f} s; ranks took {[round(r['seconds'], 2) for r in results]} s; "
              f"'last' polled through it: {seen}; {unavailable[0]} polls while down")
