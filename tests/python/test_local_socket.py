"""The co-located Unix socket from Python: ``ckptd.Client("unix:PATH")``
saves and loads through ``ckptd --local_socket PATH``, with the same tokens
and roles as over TCP."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
import torch

import ckptd
from _sharded_util import private_server
from _util import assert_same

WRITER_TOKEN = "ckptd_python-socket-writer-token-0001"


def _state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(512, 1024, generator=g), "b": torch.randn(1024, generator=g)},
        "small": [torch.arange(10, dtype=torch.int64), torch.ones(3, dtype=torch.bfloat16)],
        "epoch": seed,
        "name": "socket",
    }


def test_save_and_load_over_the_socket(tmp_path, socket_dir):
    sock = socket_dir / "ckptd.sock"
    proc = private_server(tmp_path, [f"--local_socket={sock}"])
    try:
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        state = _state(1)
        with ckptd.Client(f"unix:{sock}", timeout=30) as local:
            info = local.save("py-sock", state, step=1)
            assert info.state == "COMMITTED"
            assert_same(local.load("py-sock"), state)
            handle = local.save_async("py-sock", _state(2), step=2)
            assert handle.result().state == "COMMITTED"
        # One server, two ways in: TCP sees what the socket saved.
        with ckptd.Client(proc.address, timeout=30) as tcp:
            assert_same(tcp.load("py-sock", 1), state)
            assert_same(tcp.load("py-sock"), _state(2))
    finally:
        proc.stop()


def test_the_socket_asks_for_the_same_token(tmp_path, socket_dir, monkeypatch):
    monkeypatch.delenv("CKPTD_TOKEN", raising=False)
    sock = socket_dir / "auth.sock"
    auth = socket_dir / "auth"
    auth.write_text(f"writer writer py-* sha256:{hashlib.sha256(WRITER_TOKEN.encode()).hexdigest()}\n")
    proc = private_server(tmp_path, [f"--local_socket={sock}", f"--auth_file={auth}"])
    try:
        with ckptd.Client(f"unix:{sock}", timeout=30) as anonymous:
            with pytest.raises(ckptd.UnauthenticatedError):
                anonymous.save("py-auth", _state(3), step=1)
        with ckptd.Client(f"unix:{sock}", token=WRITER_TOKEN, timeout=30) as writer:
            with pytest.raises(ckptd.PermissionDeniedError, match="run patterns"):
                writer.save("other-run", _state(3), step=1)
            writer.save("py-auth", _state(3), step=1)
            assert_same(writer.load("py-auth"), _state(3))
    finally:
        proc.stop()
