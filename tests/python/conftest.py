"""Fixtures for the ckptd Python tests: a real `ckptd` server process.

The server binary comes from $CKPTD_BINARY (ctest sets it); the package from
$PYTHONPATH (ctest: ${CMAKE_BINARY_DIR}/python). One server serves the whole
session on a free loopback port over a temporary data dir; each test uses its
own run names, so tests do not see each other's versions.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 30
# In-flight calls get this long after SIGTERM; a short grace keeps the
# session teardown quick (the server waits it out while clients are connected).
SERVER_FLAGS = ["--shutdown_grace=2s"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `ckptd` child process on 127.0.0.1:<free port> over `data_dir`."""

    def __init__(self, binary: str, data_dir: Path, extra_flags: Optional[List[str]] = None) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.extra_flags = list(extra_flags or [])
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / (data_dir.name + ".log")
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        args = [self.binary, f"--listen={self.address}", f"--data_dir={self.data_dir}", *self.extra_flags]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ckptd exited with {self.process.returncode} during start-up:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"ckptd did not accept connections on {self.address} within {START_TIMEOUT_SECONDS}s:\n{self.log()}")

    def stop(self) -> Optional[int]:
        """SIGTERM, then waits (SIGKILL after STOP_TIMEOUT_SECONDS). Returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return "<no log>"


def ckptd_binary() -> str:
    binary = os.environ.get("CKPTD_BINARY", "")
    if not binary:
        pytest.skip("CKPTD_BINARY is not set (ctest sets it to the built ckptd)")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"CKPTD_BINARY={binary} is not an executable")
    return binary


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The session's ckptd server (address: ``server.address``)."""
    binary = ckptd_binary()
    with tempfile.TemporaryDirectory(prefix="ckptd-pytest-") as tmp:
        proc = ServerProcess(binary, Path(tmp) / "data", SERVER_FLAGS)
        proc.start()
        try:
            yield proc
        finally:
            code = proc.stop()
            if code not in (0, None):
                sys.stderr.write(f"ckptd exited with {code}; log:\n{proc.log()}\n")


@pytest.fixture
def client(server: ServerProcess):
    import ckptd

    c = ckptd.Client(server.address, timeout=30)
    yield c
    c.close()


_run_counter = itertools.count()


@pytest.fixture
def run_name(request) -> str:
    """A run name unique to this test (and this session)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:80].strip("-.") or "run"
    return f"{base}-{os.getpid()}-{next(_run_counter)}"
