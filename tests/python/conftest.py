"""Fixtures for the ckptd Python tests: a real `ckptd` server process.

The server binary comes from $CKPTD_BINARY (ctest sets it); the package from
$PYTHONPATH (ctest: ${CMAKE_BINARY_DIR}/python). One server serves the whole
session on a loopback port over a temporary data dir; each test uses its own
run names, so tests do not see each other's versions.

The server binds port 0 and reports the port it got through --port_file, so
no other process can take the port between a guess and the bind.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
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
    """A TCP port on 127.0.0.1 that was free a moment ago (bound, then released).

    Only for addresses where nothing is meant to listen (or for other
    programs' ports); a ckptd to talk to binds port 0 (``ServerProcess``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `ckptd` child process on 127.0.0.1 over `data_dir`.

    The first ``start()`` binds port 0 and reads the port the server got from
    its ``--port_file``; ``address`` and ``port`` are set from then on. Later
    ``start()`` calls (after ``stop()`` or a kill) take the same port again,
    so clients keep their address across a restart."""

    def __init__(self, binary: str, data_dir: Path, extra_flags: Optional[List[str]] = None) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.extra_flags = list(extra_flags or [])
        self.port = 0
        self.address = ""
        self.log_path = data_dir.parent / (data_dir.name + ".log")
        self.port_file = data_dir.parent / (data_dir.name + ".port")
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        try:
            self.port_file.unlink()
        except FileNotFoundError:
            pass
        args = [
            self.binary,
            f"--listen=127.0.0.1:{self.port}",
            f"--data_dir={self.data_dir}",
            f"--port_file={self.port_file}",
            *self.extra_flags,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ckptd exited with {self.process.returncode} during start-up; end of its log:\n{self.log()}"
                )
            port = self._read_port_file()
            if port is not None:
                if self.port not in (0, port):
                    self._kill()
                    raise RuntimeError(f"ckptd bound port {port} instead of {self.port}:\n{self.log()}")
                self.port = port
                self.address = f"127.0.0.1:{port}"
                return
            time.sleep(0.01)
        self._kill()
        raise RuntimeError(
            f"ckptd did not write its port to {self.port_file} within {START_TIMEOUT_SECONDS}s "
            f"(killed it); end of its log:\n{self.log()}"
        )

    def _read_port_file(self) -> Optional[int]:
        """The port in a complete port file; None while there is none.

        ckptd renames the file into place once it listens, so it is never
        seen half-written."""
        try:
            text = self.port_file.read_text()
        except FileNotFoundError:
            return None
        if not text.endswith("\n") or not text.strip().isdigit():
            self._kill()
            raise RuntimeError(f"port file {self.port_file} holds {text!r}, not a port and a newline")
        return int(text)

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

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


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for Unix socket paths (pytest's tmp_path is often
    too long: sun_path holds 107 bytes); removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="ckptd-s", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
