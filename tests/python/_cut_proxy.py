"""A TCP proxy on 127.0.0.1 for fault-injection tests of the ckptd client.

It forwards every accepted connection to the real ckptd and can

* **cut** connections: each new connection draws a random threshold from
  ``cut_range`` (bytes of upstream, client -> server, traffic); when the
  connection has forwarded exactly that many upstream bytes, both of its
  sockets are reset (RST, no FIN) -- a dropped network path in the middle of
  an HTTP/2 frame, typically in the middle of an UploadBlobs chunk;
* **hold** upstream traffic: after ``hold_after`` upstream bytes (summed over
  all connections) it stops forwarding client -> server bytes until
  :meth:`CutProxy.release` -- a rank that hangs in the middle of its upload.

Plain threads (two pumps per connection), so it can run inside the pytest
process next to a client that releases the GIL.

Example:
    >>> with CutProxy(server.address, cut_range=(4 << 20, 40 << 20), seed=1) as proxy:
    ...     ckptd.Client(proxy.address).save("run", state)
    ...     print(proxy.cuts)
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from typing import List, Optional, Tuple

_BUFFER = 1 << 20


def _split(address: str) -> Tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _reset(sock: socket.socket) -> None:
    """Closes ``sock`` with an RST (SO_LINGER 0), waking threads blocked on it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Connection:
    def __init__(self, proxy: "CutProxy", client: socket.socket, upstream: socket.socket, cut_at: Optional[int]):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.cut_at = cut_at  # upstream bytes after which the connection is cut; None: never
        self.up_bytes = 0
        self.closed = False
        self.lock = threading.Lock()

    def close(self, cut: bool = False) -> bool:
        with self.lock:
            if self.closed:
                return False
            self.closed = True
        if cut:
            with self.proxy._lock:
                self.proxy.cuts += 1
                self.proxy.cut_log.append(self.up_bytes)
                if self.proxy.max_cuts is not None and self.proxy.cuts >= self.proxy.max_cuts:
                    self.proxy.cutting = False
        _reset(self.client)
        _reset(self.upstream)
        return True

    def pump_up(self) -> None:
        buf = bytearray(_BUFFER)
        view = memoryview(buf)
        try:
            while True:
                n = self.client.recv_into(buf)
                if n == 0:
                    break
                data = view[:n]
                while len(data):
                    take = len(data)
                    if self.cut_at is not None and self.proxy.cutting:
                        take = min(take, self.cut_at - self.up_bytes)
                    take = self.proxy._admit(take)
                    if take > 0:
                        self.upstream.sendall(data[:take])
                        self.up_bytes += take
                        self.proxy._count_up(take)
                        data = data[take:]
                    if self.cut_at is not None and self.proxy.cutting and self.up_bytes >= self.cut_at:
                        self.close(cut=True)
                        return
        except OSError:
            pass
        self.close()

    def pump_down(self) -> None:
        buf = bytearray(_BUFFER)
        view = memoryview(buf)
        try:
            while True:
                n = self.upstream.recv_into(buf)
                if n == 0:
                    break
                self.client.sendall(view[:n])
        except OSError:
            pass
        self.close()


class CutProxy:
    """Forwards 127.0.0.1:<free port> (``.address``) to ``upstream``.

    Args:
        upstream: ``host:port`` of the real server.
        cut_range: ``(lo, hi)``: each connection is cut after a uniformly
            random number of upstream bytes in [lo, hi]; None: never cut.
        hold_after: stop forwarding upstream bytes once this many went through
            (over all connections), until :meth:`release`; None: never hold.
        seed: seed of the cut thresholds (reproducible runs).
        max_cuts: stop cutting after this many cuts; None: no limit.

    Attributes:
        cuts: connections cut so far.
        cut_log: upstream byte offset (within its connection) of each cut.
        connections: connections accepted so far.
        up_bytes: upstream bytes forwarded so far.
        held: an Event set when the hold started.
    """

    def __init__(
        self,
        upstream: str,
        cut_range: Optional[Tuple[int, int]] = None,
        hold_after: Optional[int] = None,
        seed: int = 0,
        max_cuts: Optional[int] = None,
    ) -> None:
        self.upstream = _split(upstream)
        self.cut_range = cut_range
        self.cutting = cut_range is not None
        self.max_cuts = max_cuts
        self.hold_after = hold_after
        self.held = threading.Event()
        self._released = threading.Event()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: List[_Connection] = []
        self.cuts = 0
        self.cut_log: List[int] = []
        self.connections = 0
        self.up_bytes = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._stopped = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="cut-proxy-accept", daemon=True)
        self._acceptor.start()

    # -- control

    def stop_cutting(self) -> None:
        """No more cuts (connections keep forwarding)."""
        self.cutting = False

    def release(self) -> None:
        """Ends a hold: upstream bytes flow again (and no new hold starts)."""
        self.hold_after = None
        self._released.set()

    def cut_all(self) -> int:
        """Cuts every open connection now; returns how many."""
        with self._lock:
            conns = list(self._conns)
        return sum(1 for c in conns if c.close(cut=True))

    def close(self) -> None:
        self._stopped = True
        self.release()
        _reset(self._listener)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()

    def __enter__(self) -> "CutProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _admit(self, n: int) -> int:
        """How many of the next ``n`` upstream bytes may go now; blocks while held."""
        with self._lock:
            limit = self.hold_after
            if limit is None:
                return n
            room = limit - self.up_bytes
            if room > 0:
                return min(n, room)
        self.held.set()
        self._released.wait()
        return n

    def _count_up(self, n: int) -> None:
        with self._lock:
            self.up_bytes += n

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cut_at = None
            with self._lock:
                if self.cut_range is not None:
                    cut_at = self._rng.randint(*self.cut_range)
                conn = _Connection(self, client, upstream, cut_at)
                self._conns = [c for c in self._conns if not c.closed]
                self._conns.append(conn)
                self.connections += 1
            threading.Thread(target=conn.pump_up, name="cut-proxy-up", daemon=True).start()
            threading.Thread(target=conn.pump_down, name="cut-proxy-down", daemon=True).start()
