"""The co-located zero-copy data plane from Python: ``ckptd.Client("unix:PATH")``
stages saves in memory the daemon owns (``save_async`` returns once the
daemon holds the snapshot) and loads by mapping the daemon's verified blob
files. A trainer killed with SIGKILL right after ``save_async`` returned
still gets its version committed, bit-identical."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ckptd
from _sharded_util import private_server, wait_until
from _util import assert_same

HERE = Path(__file__).resolve().parent

TRAINER = r"""
import os, signal, sys
import torch, ckptd
sock, run = sys.argv[1], sys.argv[2]
g = torch.Generator().manual_seed(1234)
state = {"model": {f"layer{i}": torch.randn(1 << 20, generator=g) for i in range(16)},
         "opt": {"step": 7, "lr": 0.1}, "small": torch.arange(100)}
client = ckptd.Client("unix:" + sock, timeout=30)
handle = client.save_async(run, state, step=7, metrics={"loss": 0.25})
for t in state["model"].values():
    t.zero_()  # the snapshot is the daemon's: this must not reach it
print("returned", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _trainer_state():
    g = torch.Generator().manual_seed(1234)
    return {
        "model": {f"layer{i}": torch.randn(1 << 20, generator=g) for i in range(16)},
        "opt": {"step": 7, "lr": 0.1},
        "small": torch.arange(100),
    }


def _state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(1024, 1024, generator=g), "b": torch.randn(1024, generator=g)},
        "small": [torch.arange(10, dtype=torch.int64), torch.ones(3, dtype=torch.bfloat16), torch.zeros(0)],
        "epoch": seed,
    }


def test_kill_9_of_the_trainer_after_save_async_returned_loses_nothing(tmp_path, socket_dir, monkeypatch):
    sock = socket_dir / "ckptd.sock"
    pause = socket_dir / "pause"
    # Hold the daemon's commit until the trainer is dead.
    monkeypatch.setenv("CKPTD_PAUSE_AT", f"staged.before_store={pause}")
    proc = private_server(tmp_path, [f"--local_socket={sock}"])
    try:
        trainer = subprocess.run(
            [sys.executable, "-c", TRAINER, str(sock), "kill9"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert trainer.returncode == -signal.SIGKILL, trainer.stderr
        assert trainer.stdout.strip() == "returned", trainer.stderr
        assert Path(f"{pause}.reached").exists()
        with ckptd.Client(proc.address, timeout=30) as tcp:
            with pytest.raises(ckptd.NotFoundError):
                tcp.load("kill9")  # not committed yet: the daemon waits
            Path(f"{pause}.resume").touch()
            info = wait_until(
                lambda: next((v for v in tcp.versions("kill9") if v.state == "COMMITTED"), None),
                timeout=60,
                what="the staged version to commit",
            )
            assert info.step == 7 and info.metrics == {"loss": 0.25}
            assert_same(tcp.load("kill9"), _trainer_state())
    finally:
        proc.stop()


def test_colocated_load_maps_verified_copy_on_write_tensors(tmp_path, socket_dir):
    sock = socket_dir / "ckptd.sock"
    proc = private_server(tmp_path, [f"--local_socket={sock}"])
    try:
        state = _state(1)
        with ckptd.Client(f"unix:{sock}", timeout=30) as local, ckptd.Client(proc.address, timeout=30) as tcp:
            local.save("map", state, step=1)
            # Mapped: the gRPC read is not used at all.
            real_read = ckptd.client._Reader.read
            ckptd.client._Reader.read = lambda *a, **k: pytest.fail("loaded over gRPC")
            try:
                loaded = local.load("map")
            finally:
                ckptd.client._Reader.read = real_read
            assert_same(loaded, state)
            assert_same(tcp.load("map"), state)
            # Private mappings: changing a loaded tensor changes nothing stored.
            loaded["model"]["w"].add_(1.0)
            loaded["small"][0][0] = 99
            assert_same(local.load("map"), state)
            assert_same(local.load("map", keys=["model.b"]), {"model": {"b": state["model"]["b"]}})
            # A damaged blob file: the mapping does not verify, the load falls
            # back to gRPC, which reports DATA_LOSS (and quarantines the blob).
            info = tcp.get("map")
            blobs = [p for p in (tmp_path / "data" / "blobs").rglob("*") if p.is_file()]
            biggest = max(blobs, key=lambda p: p.stat().st_size)
            with open(biggest, "r+b") as f:
                f.seek(12345)
                byte = f.read(1)
                f.seek(12345)
                f.write(bytes([byte[0] ^ 0xFF]))
            with pytest.raises(ckptd.DataLossError, match=f"map@{info.version}"):
                local.load("map")
    finally:
        proc.stop()


def _metric(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def test_save_async_over_the_socket_snapshots_and_commits_in_order(tmp_path, socket_dir):
    sock = socket_dir / "ckptd.sock"
    port_file = tmp_path / "metrics.port"
    proc = private_server(
        tmp_path,
        [f"--local_socket={sock}", "--metrics_listen=127.0.0.1:0", f"--metrics_port_file={port_file}"],
    )
    try:
        with ckptd.Client(f"unix:{sock}", timeout=30) as local:
            state = _state(2)
            handles = []
            for step in range(1, 4):
                handles.append(local.save_async("order", state, step=step, metrics={"loss": 1.0 / step}))
                # Changing the tensors after save_async returned does not
                # reach the saved snapshot.
                state["model"]["w"].add_(1.0)
            expected = []
            for step in range(1, 4):
                want = _state(2)
                for _ in range(step - 1):
                    want["model"]["w"].add_(1.0)
                expected.append(want)
            infos = [h.result() for h in handles]
            assert [i.version for i in infos] == [1, 2, 3]
            assert all(i.state == "COMMITTED" for i in infos)
            for i, want in zip(infos, expected):
                assert_same(local.load("order", i.version), want)
            assert local.get("order", "last").version == 3
        # Three staged saves; afterwards the daemon holds one spare of the
        # state's size for the next save, and nothing else.
        port = int(port_file.read_text().split()[0])
        assert _metric(port, "ckptd_staged_saves_total") == 3
        wait_until(lambda: _metric(port, "ckptd_staged_bytes") > 0, timeout=30, what="the spare")
        staged = _metric(port, "ckptd_staged_bytes")
        assert 4 << 20 < staged < (4 << 20) + (64 << 10), staged
    finally:
        proc.stop()


def test_a_save_larger_than_max_staged_bytes_goes_over_grpc(tmp_path, socket_dir, caplog):
    sock = socket_dir / "ckptd.sock"
    proc = private_server(tmp_path, [f"--local_socket={sock}", "--max_staged_bytes=1048576"])
    try:
        with ckptd.Client(f"unix:{sock}", timeout=30) as local:
            state = _state(3)  # 4 MiB of tensors
            with caplog.at_level(logging.WARNING, logger="ckptd"):
                info = local.save_async("big", state, step=1).result()
            assert info.state == "COMMITTED"
            assert "--max_staged_bytes=1048576" in caplog.text
            assert_same(local.load("big"), state)
            small = {"x": torch.arange(1000)}
            assert local.save("big", small, step=2).state == "COMMITTED"
            assert_same(local.load("big"), small)
    finally:
        proc.stop()


def test_sharded_colocated_saves_publish_once_every_rank_is_in(tmp_path, socket_dir):
    sock = socket_dir / "ckptd.sock"
    proc = private_server(tmp_path, [f"--local_socket={sock}"])
    try:
        with ckptd.Client(f"unix:{sock}", timeout=30) as local:
            first = local.save("sharded", _state(10), step=5, rank=0, world_size=2)
            assert first.state == "PENDING"
            second = local.save_async("sharded", _state(11), step=5, rank=1, world_size=2).result()
            assert second.state == "COMMITTED" and second.version == first.version
            assert_same(local.load("sharded", rank=0), _state(10))
            assert_same(local.load("sharded", rank=1), _state(11))
    finally:
        proc.stop()
