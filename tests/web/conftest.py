"""Fixtures of the web view tests: real `ckptd` processes with --http_listen,
filled through the Python client, and one headless Chromium.

ckptd comes from $CKPTD_BINARY and the `ckptd` package from $PYTHONPATH
(ctest sets both, as for tests/python). The server process helper is
tests/python/conftest.py's ServerProcess (loaded from there, not copied).
Screenshots go to $CKPTD_WEB_SCREENSHOTS (ctest: build/web-screenshots).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _chromium import Browser  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "ckptd_python_conftest", Path(__file__).parent.parent / "python" / "conftest.py"
)
_python_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_python_conftest)
ServerProcess = _python_conftest.ServerProcess
ckptd_binary = _python_conftest.ckptd_binary

PORT_FILE_TIMEOUT_SECONDS = 30

ADMIN_TOKEN = "ckptd_web-view-test-admin-token-000000000000001"
READER_TOKEN = "ckptd_web-view-test-reader-token-00000000000002"

# User data that must reach the page as text, never as markup.
XSS_LABEL = '<script>window.__xss = "label"</script><img src=x onerror="window.__xss = \'img\'">'
XSS_METRIC = '<b onmouseover="window.__xss = 1">acc@top5</b>'
XSS_KEY = "<svg onload=\"window.__xss = 'key'\">"


class WebServer:
    """A ckptd with the web view: `api(path)` asks its JSON API."""

    def __init__(self, proc: ServerProcess, http_port: int) -> None:
        self.proc = proc
        self.http_port = http_port
        self.base = f"http://127.0.0.1:{http_port}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def address(self) -> str:
        return self.proc.address

    def request(
        self, path: str, token: Optional[str] = None, method: str = "GET", headers: Optional[Dict[str, str]] = None
    ) -> Tuple[int, Dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, method=method, headers=dict(headers or {}))
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with self._opener.open(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def api(self, path: str, token: Optional[str] = None, **kw) -> Tuple[int, dict]:
        status, headers, body = self.request(f"/api/v1/{path}", token, **kw)
        assert headers.get("Content-Type", "").startswith("application/json"), (path, headers)
        return status, json.loads(body)


def start_web_server(tmp: Path, flags: List[str]) -> WebServer:
    port_file = tmp / "http.port"
    proc = ServerProcess(
        ckptd_binary(),
        tmp / "data",
        ["--shutdown_grace=2s", "--http_listen=127.0.0.1:0", f"--http_port_file={port_file}", *flags],
    )
    proc.start()
    # ckptd writes --http_port_file right after --port_file.
    deadline = time.monotonic() + PORT_FILE_TIMEOUT_SECONDS
    while True:
        text = port_file.read_text() if port_file.exists() else ""
        if text.endswith("\n") and text.strip().isdigit():
            return WebServer(proc, int(text))
        if proc.process.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"ckptd wrote no --http_port_file; log:\n{proc.log()}")
        time.sleep(0.01)


def _state(seed: int, extra_key: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {
        "model": {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.zeros(4)},
        "optimizer": {"state": {0: {"exp_avg": torch.randn(4, 3, generator=g)}}, "param_groups": [{"lr": 0.1}]},
        "epoch": seed,
    }
    if extra_key:
        state[XSS_KEY] = torch.arange(6, dtype=torch.int16)
    return state


# The main run: (step, metrics) per version. Version 4 has no `loss`, so the
# loss chart has one point fewer than the acc chart; `best` (min loss) is 3.
MNIST = "web-mnist"
MNIST_VERSIONS = [
    (100, {"loss": 0.9, "acc": 0.61}),
    (200, {"loss": 0.52, "acc": 0.7}),
    (300, {"loss": 0.35, "acc": 0.8, XSS_METRIC: 0.93}),
    (400, {"acc": 0.82}),
    (500, {"loss": 0.42, "acc": 0.81, XSS_METRIC: 0.95}),
]
MNIST_BEST = 3
BERT = "web-bert"


def fill(address: str, token: Optional[str], runs: Dict[str, str]) -> None:
    """Pushes MNIST_VERSIONS into runs["mnist"] and two versions into
    runs["bert"], with a policy, labels and a user alias that moves."""
    import ckptd

    client = ckptd.Client(address, token=token, timeout=60)
    try:
        mnist, bert = runs["mnist"], runs["bert"]
        client.set_policy(mnist, monitor="loss", mode="min")
        for i, (step, metrics) in enumerate(MNIST_VERSIONS, start=1):
            labels = {"dataset": "mnist-v3", "note": XSS_LABEL} if i == MNIST_BEST else {"dataset": "mnist-v3"}
            client.save(mnist, _state(i, extra_key=i == MNIST_BEST), step=step, epoch=i, metrics=metrics, labels=labels)
        client.set_alias(mnist, "prod", 2)
        client.set_alias(mnist, "prod", MNIST_BEST)
        client.set_policy(bert, monitor="val_acc", mode="max")
        for i, acc in enumerate([0.5, 0.75], start=1):
            client.save(bert, _state(10 + i), step=i * 1000, epoch=i, metrics={"val_acc": acc})
    finally:
        client.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    d = Path(os.environ.get("CKPTD_WEB_SCREENSHOTS") or tempfile.mkdtemp(prefix="ckptd-web-shots-"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def open_server(tmp_path_factory) -> Iterator[WebServer]:
    """ckptd without --auth_file: loopback, every caller is `local`."""
    web = start_web_server(tmp_path_factory.mktemp("open"), [])
    try:
        fill(web.address, None, {"mnist": MNIST, "bert": BERT})
        yield web
    finally:
        web.proc.stop()


ALPHA = "web-alpha"  # the reader may read it
ZETA = "web-zeta"  # the reader may not


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory) -> Iterator[WebServer]:
    """ckptd with --auth_file: an admin (every run) and a reader of web-a*."""
    tmp = tmp_path_factory.mktemp("auth")
    auth = tmp / "auth"
    auth.write_text(
        "# web view test\n"
        f"ops    admin  *       sha256:{hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}\n"
        f"viewer reader web-a* sha256:{hashlib.sha256(READER_TOKEN.encode()).hexdigest()}\n"
    )
    web = start_web_server(tmp, [f"--auth_file={auth}"])
    try:
        fill(web.address, ADMIN_TOKEN, {"mnist": ALPHA, "bert": ZETA})
        yield web
    finally:
        web.proc.stop()


@pytest.fixture(scope="session")
def browser(tmp_path_factory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium"))
    try:
        yield b
    finally:
        b.close()


def open_without_token(browser: Browser, url: str) -> str:
    """Opens `url` with no token in the tab's sessionStorage for its origin
    (a token entered by an earlier test is forgotten); returns the state."""
    browser.navigate(url)
    browser.evaluate("sessionStorage.clear()")
    return browser.navigate(url)
