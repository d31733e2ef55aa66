"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol.

Python's standard library only: a minimal WebSocket client (RFC 6455, text
frames, client-side masking) speaks the protocol's JSON messages to the
page target of a `chromium --headless --remote-debugging-port=0` child
process, which reports the port it bound in its profile directory
(DevToolsActivePort), as ckptd's --port_file does.

    with Browser(profile_dir) as b:
        b.navigate("http://127.0.0.1:PORT/")      # waits for the page's state
        b.evaluate("document.title")
        b.screenshot(Path("page.png"))
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, List, Optional

START_TIMEOUT_SECONDS = 90
# How long a page may take to leave the "loading" state (a loaded machine
# starts Chromium slowly; a page normally settles in well under a second).
PAGE_TIMEOUT_SECONDS = 60
SOCKET_TIMEOUT_SECONDS = 120
FINAL_STATES = ("ready", "error", "need-token")
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("Debian's chromium is not installed: run deploy/install-deps.sh (apt-get install chromium)")


class DevToolsError(RuntimeError):
    pass


class _WebSocket:
    """One client WebSocket connection; messages are text (JSON)."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlparse(url)
        self._sock = socket.create_connection((u.hostname, u.port), timeout=SOCKET_TIMEOUT_SECONDS)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self._sock.sendall(request.encode())
        self._buf = b""
        while b"\r\n\r\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise DevToolsError("DevTools closed the connection during the WebSocket handshake")
            self._buf += chunk
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise DevToolsError(f"WebSocket handshake refused: {lines[0]}")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        if headers.get("sec-websocket-accept") != accept:
            raise DevToolsError("WebSocket handshake: wrong Sec-WebSocket-Accept")

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise DevToolsError("DevTools closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise DevToolsError("DevTools closed the WebSocket")
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return message.decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self._sock.close()


class Browser:
    """A headless Chromium child process and its one page."""

    def __init__(self, profile_dir: Path, width: int = 1280, height: int = 900) -> None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = profile_dir / "chromium.log"
        args = [
            chromium_binary(),
            "--headless",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
            "--hide-scrollbars",
            "--mute-audio",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile_dir}",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._id = 0
        self.events: List[dict] = []
        try:
            port = self._wait_for_port(profile_dir / "DevToolsActivePort")
            self._ws = _WebSocket(self._page_url(port))
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self, path: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DevToolsError(f"chromium exited with {self.process.returncode}; log:\n{self.log()}")
            try:
                lines = path.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 2 and lines[0].isdigit():
                return int(lines[0])
            time.sleep(0.05)
        raise DevToolsError(f"chromium wrote no {path} within {START_TIMEOUT_SECONDS}s; log:\n{self.log()}")

    def _page_url(self, port: int) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=SOCKET_TIMEOUT_SECONDS) as resp:
                targets = json.load(resp)
            pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            if time.monotonic() > deadline:
                raise DevToolsError(f"chromium has no page target: {targets}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "<no log>"

    def call(self, method: str, **params: Any) -> dict:
        self._id += 1
        call_id = self._id
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise DevToolsError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(f"JavaScript error in {expression[:80]!r}: {text}")
        return result["result"].get("value")

    def query(self, expression: str) -> Any:
        """Evaluates an expression that returns JSON-able data (as JSON text, so
        nested structures survive intact)."""
        return json.loads(self.evaluate(f"JSON.stringify({expression})"))

    def wait_for_page(self) -> str:
        """Waits until the page leaves its loading state; returns the state
        (document.body.dataset.state: ready, error or need-token)."""
        deadline = time.monotonic() + PAGE_TIMEOUT_SECONDS
        while True:
            state = self.evaluate("document.body ? (document.body.dataset.state || '') : ''")
            if state in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise DevToolsError(f"the page is still {state!r} after {PAGE_TIMEOUT_SECONDS}s; console: {self.console()}")
            time.sleep(0.05)

    def navigate(self, url: str) -> str:
        # Mark the old document so that its state is not taken for the new one's.
        self.evaluate("document.body && (document.body.dataset.state = 'navigating')")
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"navigate {url}: {result['errorText']}")
        return self.wait_for_page()

    def type_text(self, text: str) -> None:
        """Types into the focused element, as a keyboard would."""
        self.call("Input.insertText", text=text)

    def console(self) -> List[str]:
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.consoleAPICalled":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"]))
            elif e.get("method") == "Runtime.exceptionThrown":
                d = e["params"]["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text", ""))
        return out

    def screenshot(self, path: Path) -> bytes:
        """A PNG of the whole page (not only the window), written to `path`."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        result = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        data = base64.b64decode(result["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def close(self) -> None:
        ws: Optional[_WebSocket] = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
            self._ws = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
