"""Multi-rank saves: ranks of one version meet through (run, step), the
version publishes atomically when all shards are in, and a version whose
ranks do not all commit is never visible and is aborted.

The multi-process tests start real rank processes (tests/python/_sharded_util.py
as a script) that join a torch.distributed gloo group on 127.0.0.1 and save
their shards concurrently; the test process checks what the server shows.
"""

from __future__ import annotations

import threading
import time

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
    state_tensor_bytes,
    state_tensor_count,
    wait_ranks,
)
from _util import RecordingNative, assert_same

import ckptd

PENDING_TIMEOUT_SECONDS = 3


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory):
    """A ckptd of this module's own that aborts versions pending for more than 3 s
    (it sweeps every 0.75 s)."""
    proc = private_server(tmp_path_factory.mktemp("pending-timeout"), [f"--pending_timeout={PENDING_TIMEOUT_SECONDS}s"])
    try:
        yield proc
    finally:
        proc.stop()


def _free_port() -> int:
    from conftest import free_port

    return free_port()


# ---------------------------------------------------------------- 4 real ranks


def test_four_ranks_save_one_version_and_load_per_rank(server, client, run_name, tmp_path):
    world = 4
    procs = launch_ranks([server.address] * world, run_name, 100, tmp_path, dist_port=_free_port(), gather=True)
    try:
        wait_ranks(procs, tmp_path, timeout=180)
    finally:
        kill_all(procs)

    results = [read_result(tmp_path, r) for r in range(world)]
    for r, res in enumerate(results):
        assert res is not None and res["ok"], f"rank {r}: {res}\n{rank_log(tmp_path, r)}"
    version = results[0]["version"]
    # Every rank got the same version, and saw that every other rank did.
    assert [res["version"] for res in results] == [version] * world
    assert all(res["all_versions"] == [version] * world for res in results)
    # Only the rank whose shard completed the version sees it COMMITTED.
    states = sorted(res["state"] for res in results)
    assert states == ["COMMITTED"] + ["PENDING"] * (world - 1), results

    info = client.get(run_name, version)
    assert info.state == "COMMITTED" and info.world_size == world and info.step == 100
    assert [s.rank for s in info.shards] == list(range(world))
    expected = {r: shard_state(r) for r in range(world)}
    for s in info.shards:
        assert s.total_bytes == state_tensor_bytes(expected[s.rank])
        assert s.tensor_count == state_tensor_count(expected[s.rank])
        assert s.committed_at is not None
    assert info.total_bytes == sum(state_tensor_bytes(e) for e in expected.values())
    assert info.metrics == {"loss": 1.0}  # the lowest rank wins a conflicting metric
    assert client.get(run_name, "last").version == version
    assert [v.version for v in client.versions(run_name)] == [version]

    for r in range(world):
        loaded = client.load(run_name, version, rank=r)
        assert_same(loaded, expected[r])  # types, key order, dtypes, shapes, bytes
        key = f"layers.{r}.weight"
        assert torch.equal(loaded["model"][key], expected[r]["model"][key])
        assert loaded["model"]["embed.weight"].dtype == torch.bfloat16
        assert list(loaded["optimizer"]["state"]) == [r]  # int keys survive

    every = client.load(run_name, version)
    assert sorted(every) == list(range(world))
    for r in range(world):
        assert_same(every[r], expected[r])
    with pytest.raises(ckptd.InvalidArgumentError, match="rank 4"):
        client.load(run_name, version, rank=4)


def test_killed_rank_never_publishes_and_the_version_times_out(timeout_server, tmp_path, run_name):
    """Ranks 0-1 commit; rank 2 hangs in the middle of its upload; rank 3
    hangs likewise and is SIGKILLed. Nothing of the version is visible while
    it is pending; after --pending_timeout it is aborted, and rank 2, when it
    gets through, is told so."""
    client = ckptd.Client(timeout_server.address, timeout=30)
    base = client.save(run_name, {"w": torch.arange(10.0)}, step=0)
    assert base.state == "COMMITTED"

    # Ranks 2 and 3 reach the server through proxies that stop forwarding
    # after 1 MiB of their traffic: their versions are begun and their 4 MiB
    # blobs half sent.
    hold2 = CutProxy(timeout_server.address, hold_after=1 * MiB)
    hold3 = CutProxy(timeout_server.address, hold_after=1 * MiB)
    addresses = [timeout_server.address, timeout_server.address, hold2.address, hold3.address]
    procs = launch_ranks(addresses, run_name, 7, tmp_path, dist_port=_free_port(), big_bytes=4 * MiB)
    try:
        wait_ranks(procs, tmp_path, timeout=120, ranks=[0, 1])
        finished = [read_result(tmp_path, r) for r in (0, 1)]
        assert all(f["ok"] and f["state"] == "PENDING" for f in finished), finished
        version = finished[0]["version"]
        assert finished[1]["version"] == version
        assert hold2.held.wait(30) and hold3.held.wait(30), "ranks 2/3 did not start uploading"

        procs[3].kill()  # SIGKILL before it commits
        procs[3].wait()
        assert procs[3].returncode == -9

        # Poll: invisible while pending, then ABORTED by the sweep.
        polls = 0
        aborted = None
        deadline = time.monotonic() + PENDING_TIMEOUT_SECONDS + 15
        while time.monotonic() < deadline:
            assert [v.version for v in client.versions(run_name)] == [base.version]
            assert client.get(run_name, "last").version == base.version
            with pytest.raises(ckptd.FailedPreconditionError, match=f"@{version} (is pending|was aborted)"):
                client.get(run_name, version)
            with pytest.raises(ckptd.FailedPreconditionError):
                client.load(run_name, version, rank=0)
            polls += 1
            listed = {v.version: v for v in client.versions(run_name, include_aborted=True)}
            if version in listed and listed[version].state == "ABORTED":
                aborted = listed[version]
                break
            time.sleep(0.1)
        assert aborted is not None, f"{run_name}@{version} was not aborted within {PENDING_TIMEOUT_SECONDS}s + sweep"
        assert polls >= 3
        assert f"no rank made progress for {PENDING_TIMEOUT_SECONDS}s" in aborted.abort_reason, aborted.abort_reason
        age = time.time() - aborted.created_at.timestamp()
        assert age >= PENDING_TIMEOUT_SECONDS - 0.2, f"aborted {age:.2f}s after it was begun"
        assert [s.rank for s in aborted.shards] == [0, 1]

        # Rank 2 comes back and finishes its upload: a clear error, no commit.
        hold2.release()
        wait_ranks(procs, tmp_path, timeout=60, ranks=[2])
        late = read_result(tmp_path, 2)
        assert late is not None and not late["ok"], late
        assert late["error"] == "FailedPreconditionError", late
        assert "aborted" in late["message"] and f"@{version}" in late["message"], late["message"]
    finally:
        kill_all(procs)
        hold2.close()
        hold3.close()

    assert [v.version for v in client.versions(run_name)] == [base.version]
    assert client.get(run_name, "last").version == base.version
    with pytest.raises(ckptd.FailedPreconditionError, match="aborted"):
        client.get(run_name, version)


# ---------------------------------------------------------------- one process, several ranks


def test_version_is_invisible_until_every_shard_is_committed(client, run_name):
    base = client.save(run_name, {"w": torch.ones(3)}, step=1)
    world = 3
    seen = []
    for rank in range(world):
        info = client.save(run_name, shard_state(rank), step=2, rank=rank, world_size=world)
        seen.append(info)
        assert info.version == seen[0].version and info.world_size == world
        assert [s.rank for s in info.shards] == list(range(rank + 1))
        if rank < world - 1:
            assert info.state == "PENDING" and info.committed_at is None
            assert [v.version for v in client.versions(run_name)] == [base.version]
            assert [v.version for v in client.versions(run_name, include_aborted=True)] == [base.version]
            assert client.get(run_name, "last").version == base.version
            with pytest.raises(ckptd.FailedPreconditionError, match=f"pending \\({rank + 1} of {world} shards"):
                client.get(run_name, info.version)
            with pytest.raises(ckptd.FailedPreconditionError):
                client.load(run_name, info.version, rank=0)
    final = seen[-1]
    assert final.state == "COMMITTED" and final.committed_at is not None and "last" in final.aliases
    assert [v.version for v in client.versions(run_name)] == [base.version, final.version]
    assert client.get(run_name, "last").version == final.version
    for rank in range(world):
        assert_same(client.load(run_name, "last", rank=rank), shard_state(rank))


def test_retry_is_idempotent_conflict_and_world_size_mismatch_are_rejected(client, run_name):
    first = client.save(run_name, shard_state(0), step=5, rank=0, world_size=2)
    assert first.state == "PENDING"

    # The same shard again (a retry): same version, nothing duplicated.
    again = client.save(run_name, shard_state(0), step=5, rank=0, world_size=2)
    assert again.version == first.version and again.state == "PENDING"
    assert [s.rank for s in again.shards] == [0]
    assert again.total_bytes == first.total_bytes

    # A different shard 0 for the same version.
    with pytest.raises(ckptd.FailedPreconditionError, match="rank 0 .*already committed with a different manifest"):
        client.save(run_name, shard_state(0, seed=1), step=5, rank=0, world_size=2)

    # Ranks disagreeing on world_size.
    for rank, ws in ((1, 3), (0, 1)):
        with pytest.raises(ckptd.InvalidArgumentError, match=f"world_size {ws} does not match .*world_size 2"):
            client.save(run_name, shard_state(rank), step=5, rank=rank, world_size=ws)

    last = client.save(run_name, shard_state(1), step=5, rank=1, world_size=2)
    assert last.version == first.version and last.state == "COMMITTED"
    assert [s.rank for s in last.shards] == [0, 1]
    # Shard 0 is the first one, not the rejected conflicting one.
    assert_same(client.load(run_name, first.version, rank=0), shard_state(0))
    assert_same(client.load(run_name, first.version, rank=1), shard_state(1))


def test_load_checks_world_size(client, run_name):
    for rank in range(2):
        info = client.save(run_name, shard_state(rank, big_bytes=64 * 1024), step=3, rank=rank, world_size=2)
    assert info.state == "COMMITTED" and info.world_size == 2
    both = client.load(run_name, info.version, world_size=2)
    assert sorted(both) == [0, 1]
    assert_same(client.load(run_name, "last", rank=1, world_size=2), shard_state(1, big_bytes=64 * 1024))

    recorder = RecordingNative(client._native)
    client._native = recorder
    # (world_size, rank): rank 3 does not exist in the stored version either;
    # the world_size mismatch is what gets reported.
    for ws, rank in ((1, None), (4, None), (1, 0), (4, 1), (4, 3)):
        with pytest.raises(ckptd.InvalidArgumentError) as err:
            client.load(run_name, "last", rank=rank, world_size=ws)
        message = str(err.value)
        assert f"world_size {ws} does not match {run_name}@{info.version}" in message, message
        assert "saved with world_size 2" in message, message
        with pytest.raises(ckptd.InvalidArgumentError, match=f"world_size {ws} does not match"):
            client.load_into(torch.nn.Linear(2, 2), run_name, "last", key="model", rank=rank, world_size=ws)
    assert recorder.reads == []  # refused before any tensor bytes travelled
    with pytest.raises(ckptd.InvalidArgumentError, match="rank 2 is not below world_size 2"):
        client.load(run_name, "last", rank=2, world_size=2)
    with pytest.raises(ckptd.InvalidArgumentError, match="world_size must be >= 1"):
        client.load(run_name, "last", world_size=0)

    single = client.save(run_name, {"w": torch.ones(2)}, step=4)
    assert torch.equal(client.load(run_name, single.version, world_size=1)["w"], torch.ones(2))
    with pytest.raises(ckptd.InvalidArgumentError, match="world_size 2 does not match .*saved with world_size 1"):
        client.load(run_name, single.version, world_size=2)


def test_abort_errors(client, run_name):
    committed = client.save(run_name, {"w": torch.ones(2)}, step=1)
    with pytest.raises(ckptd.FailedPreconditionError, match="committed"):
        client.abort(run_name, committed.version, "too late")
    assert client.get(run_name, committed.version).state == "COMMITTED"
    with pytest.raises(ckptd.NotFoundError):
        client.abort(run_name, committed.version + 100)
    with pytest.raises(ckptd.InvalidArgumentError, match="version must be >= 1"):
        client.abort(run_name, 0)
    with pytest.raises(ckptd.InvalidArgumentError, match="version must be an int"):
        client.abort(run_name, "last")

    pending = client.save(run_name, {"w": torch.ones(2)}, step=2, rank=0, world_size=2)
    assert pending.state == "PENDING"
    client.abort(run_name, pending.version)  # reason is optional
    client.abort(run_name, pending.version, "again")  # a no-op
    listed = {v.version: v for v in client.versions(run_name, include_aborted=True)}
    assert listed[pending.version].state == "ABORTED" and listed[pending.version].abort_reason
    assert [v.version for v in client.versions(run_name)] == [committed.version]
    with pytest.raises(ckptd.FailedPreconditionError, match="aborted"):
        client.get(run_name, pending.version)


def test_explicit_abort_fails_the_rank_still_uploading(client, server, run_name):
    """Rank 0's error handler aborts the version (``Client.abort``) while rank 1
    is still uploading into it."""
    first = client.save(run_name, shard_state(0), step=9, rank=0, world_size=2)
    assert first.state == "PENDING"

    outcome = {}
    with CutProxy(server.address, hold_after=1 * MiB) as hold:
        slow = ckptd.Client(hold.address, timeout=30)

        def rank1():
            try:
                outcome["info"] = slow.save(run_name, shard_state(1, big_bytes=4 * MiB), step=9, rank=1, world_size=2)
            except ckptd.CheckpointError as e:
                outcome["error"] = e

        t = threading.Thread(target=rank1)
        t.start()
        assert hold.held.wait(30), "rank 1 did not start uploading"
        client.abort(run_name, first.version, "rank 0 ran out of memory")
        listed = {v.version: v for v in client.versions(run_name, include_aborted=True)}
        assert listed[first.version].state == "ABORTED"
        assert listed[first.version].abort_reason == "rank 0 ran out of memory"
        with pytest.raises(ckptd.FailedPreconditionError, match="was aborted: rank 0 ran out of memory"):
            client.get(run_name, first.version)
        hold.release()
        t.join(60)
        assert not t.is_alive()

    assert "info" not in outcome, f"rank 1 committed into an aborted version: {outcome.get('info')}"
    err = outcome["error"]
    assert isinstance(err, ckptd.FailedPreconditionError), repr(err)
    assert "aborted" in err.message and "rank 0 ran out of memory" in err.message, err.message
    assert client.versions(run_name) == []
    # A new save of the same step begins a new version.
    fresh = client.save(run_name, shard_state(0), step=9, rank=0, world_size=2)
    assert fresh.version > first.version and fresh.state == "PENDING"
