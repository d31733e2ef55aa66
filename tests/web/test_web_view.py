"""The web view (ckptd --http_listen) in headless Chromium, and its JSON API.

Each page is loaded in a real browser against a real ckptd filled through
the Python client; the test reads the DOM the page built (every run listed,
one chart point per version that has the metric, `best` marked, alias and
audit history, a version's environment and tensors, user data shown as
text) and saves a screenshot of it. The JSON API and the flags are tried
with bad input too.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

import ckptd
from conftest import (
    ADMIN_TOKEN,
    ALPHA,
    BERT,
    MNIST,
    MNIST_BEST,
    MNIST_VERSIONS,
    READER_TOKEN,
    XSS_KEY,
    XSS_LABEL,
    XSS_METRIC,
    ZETA,
    ckptd_binary,
    open_without_token,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def shoot(browser, screenshots: Path, name: str) -> None:
    data = browser.screenshot(screenshots / f"{name}.png")
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name


def no_injected_markup(browser) -> None:
    """Nothing from user data ran or became an element."""
    assert browser.evaluate("window.__xss === undefined") is True
    # The only script is app.js; no <img>, <b> or <svg onload> from data.
    assert browser.query("[...document.scripts].map((s) => s.getAttribute('src'))") == ["/assets/app.js"]
    assert browser.evaluate("document.querySelectorAll('main img, main b, main script, [onload], [onerror], [onmouseover]').length") == 0


# ---------------------------------------------------------------- pages, no auth


def test_runs_page_lists_every_run(open_server, browser, screenshots):
    with ckptd.Client(open_server.address) as client:
        expected = sorted(r.name for r in client.runs())
    assert expected == sorted([MNIST, BERT])
    assert browser.navigate(open_server.base + "/") == "ready"
    rows = browser.query(
        "[...document.querySelectorAll('#runs tr.run')].map((r) => ({run: r.dataset.run,"
        " text: r.querySelector('a.run-name').textContent, href: r.querySelector('a.run-name').getAttribute('href'),"
        " cells: [...r.cells].map((c) => c.textContent)}))"
    )
    assert sorted(r["run"] for r in rows) == expected
    for r in rows:
        assert r["text"] == r["run"] and r["href"] == f"/runs/{r['run']}"
    mnist = next(r for r in rows if r["run"] == MNIST)
    # Versions, size, last, best, monitor.
    assert mnist["cells"][1] == str(len(MNIST_VERSIONS))
    assert mnist["cells"][3] == f"v{len(MNIST_VERSIONS)}"
    assert mnist["cells"][4] == f"v{MNIST_BEST}"
    assert mnist["cells"][5] == "loss (min)"
    assert browser.evaluate("document.getElementById('identity').textContent") == "local"
    shoot(browser, screenshots, "runs")


def test_run_page_charts_one_point_per_version_with_best_marked(open_server, browser, screenshots):
    with ckptd.Client(open_server.address) as client:
        versions = client.versions(MNIST)
        best = client.get(MNIST, "best").version
    assert best == MNIST_BEST
    assert browser.navigate(f"{open_server.base}/runs/{MNIST}") == "ready", browser.console()
    charts = browser.query(
        "[...document.querySelectorAll('figure.chart-box')].map((f) => ({"
        " metric: f.dataset.metric, caption: f.querySelector('.metric-name').textContent,"
        " points: [...f.querySelectorAll('circle.point')].map((c) => Number(c.dataset.version)),"
        " values: [...f.querySelectorAll('circle.point')].map((c) => Number(c.dataset.value)),"
        " best: [...f.querySelectorAll('circle.point[data-best=\"true\"]')].map((c) => Number(c.dataset.version)),"
        " bestClass: [...f.querySelectorAll('circle.point.best')].length,"
        " bestLabel: [...f.querySelectorAll('text.best-label')].map((t) => t.textContent)}))"
    )
    metrics = sorted({m for v in versions for m in v.metrics})
    assert sorted(c["metric"] for c in charts) == metrics
    # The monitored metric comes first.
    assert charts[0]["metric"] == "loss"
    for chart in charts:
        m = chart["metric"]
        having = [v for v in versions if m in v.metrics]
        assert sorted(chart["points"]) == [v.version for v in having], m
        assert sorted(chart["values"]) == sorted(v.metrics[m] for v in having), m
        assert chart["caption"] == m  # metric names are text (XSS_METRIC too)
        if any(v.version == best for v in having):
            assert chart["best"] == [best] and chart["bestClass"] == 1, m
            assert chart["bestLabel"] == [f"best v{best}"], m
        else:
            assert chart["best"] == [] and chart["bestLabel"] == [], m
    loss = next(c for c in charts if c["metric"] == "loss")
    assert len(loss["points"]) == len(versions) - 1  # version 4 has no loss
    assert XSS_METRIC in metrics
    no_injected_markup(browser)
    shoot(browser, screenshots, "run")


def test_run_page_versions_aliases_and_audit(open_server, browser):
    with ckptd.Client(open_server.address) as client:
        versions = client.versions(MNIST)
        alias_events = client.alias_history(MNIST)
    if browser.evaluate("location.pathname") != f"/runs/{MNIST}":
        assert browser.navigate(f"{open_server.base}/runs/{MNIST}") == "ready"
    rows = browser.query(
        "[...document.querySelectorAll('#versions tr.version')].map((r) => ({v: Number(r.dataset.version),"
        " step: r.cells[1].textContent, epoch: r.cells[2].textContent,"
        " aliases: [...r.querySelectorAll('.alias')].map((a) => a.textContent),"
        " labels: [...r.querySelectorAll('.label-chip')].map((a) => a.textContent),"
        " size: r.cells[5].textContent, uploaded: r.cells[6].textContent}))"
    )
    assert [r["v"] for r in rows] == [v.version for v in versions]
    for r, v in zip(rows, versions):
        assert r["step"] == str(v.step) and r["epoch"] == str(v.epoch)
        assert sorted(r["aliases"]) == sorted(v.aliases), v.version
        assert r["size"].endswith("B") and r["uploaded"].endswith("B")
    best_row = next(r for r in rows if r["v"] == MNIST_BEST)
    assert "best" in best_row["aliases"] and "prod" in best_row["aliases"]
    assert f"note={XSS_LABEL}" in best_row["labels"]  # shown as text
    assert "last" in rows[-1]["aliases"]

    events = browser.query(
        "[...document.querySelectorAll('#alias-history tr.alias-event')].map((r) =>"
        " [...r.cells].map((c) => c.textContent))"
    )
    assert len(events) == len(alias_events)
    prod = [e for e in events if e[1] == "prod"]
    # Newest first: prod 2 -> 3, then prod new -> 2.
    assert [(e[2], e[3]) for e in prod] == [("v2", f"v{MNIST_BEST}"), ("–", "v2")]
    assert all(e[4] == "local" for e in events)

    status, audit = open_server.api(f"runs/{MNIST}/audit")
    assert status == 200 and audit["events"]
    actions = browser.query("[...document.querySelectorAll('#audit tr.audit-event')].map((r) => r.dataset.action)")
    assert len(actions) == len(audit["events"])
    assert {"set_policy", "alias_move"} <= set(actions)
    no_injected_markup(browser)


def test_version_page_environment_and_tensors(open_server, browser, screenshots):
    import torch

    with ckptd.Client(open_server.address) as client:
        info = client.get(MNIST, MNIST_BEST)
    url = f"{open_server.base}/runs/{MNIST}/versions/{MNIST_BEST}"
    assert browser.navigate(url) == "ready", browser.console()
    assert browser.evaluate("document.getElementById('version-name').textContent") == f"{MNIST}@{MNIST_BEST}"
    env = browser.query(
        "Object.fromEntries([...document.querySelectorAll('#env dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent]))"
    )
    assert env["torch"] == torch.__version__
    assert env["python"] and env["host"]
    labels = browser.query(
        "Object.fromEntries([...document.querySelectorAll('#labels tr.label')].map((r) => [r.dataset.label, r.cells[1].textContent]))"
    )
    assert labels == {"dataset": "mnist-v3", "note": XSS_LABEL}
    tensors = browser.query(
        "[...document.querySelectorAll('#tensors tr.tensor')].map((r) => ({key: r.dataset.key,"
        " text: r.cells[1].textContent, dtype: r.cells[2].textContent, shape: r.cells[3].textContent}))"
    )
    by_key = {t["key"]: t for t in tensors}
    assert sorted(by_key) == sorted(["model.fc.weight", "model.fc.bias", "optimizer.state.0.exp_avg", XSS_KEY])
    assert by_key["model.fc.weight"]["dtype"] == "float32" and by_key["model.fc.weight"]["shape"] == "[4, 3]"
    assert by_key[XSS_KEY]["text"] == XSS_KEY and by_key[XSS_KEY]["dtype"] == "int16"
    metrics = browser.query(
        "Object.fromEntries([...document.querySelectorAll('#version-metrics tr.metric')].map((r) => [r.dataset.metric, r.cells[1].textContent]))"
    )
    assert sorted(metrics) == sorted(info.metrics)
    no_injected_markup(browser)
    shoot(browser, screenshots, "version")
    # A ref names the same version.
    assert browser.navigate(f"{open_server.base}/runs/{MNIST}/versions/best") == "ready"
    assert browser.evaluate("document.getElementById('version-name').textContent") == f"{MNIST}@{MNIST_BEST}"


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("/runs/no-such-run", 404, "no run named 'no-such-run'"),
        ("/runs/bad%3Cname%3E", 400, "run name"),
        (f"/runs/{MNIST}/versions/99", 404, "99"),
        (f"/runs/{MNIST}/versions/0", 400, "versions start at 1"),
    ],
)
def test_pages_show_errors_as_text(open_server, browser, path, status, words):
    assert browser.navigate(open_server.base + path) == "error"
    assert browser.evaluate("document.body.dataset.httpStatus") == str(status)
    assert words in browser.evaluate("document.getElementById('error-message').textContent")
    no_injected_markup(browser)


# ---------------------------------------------------------------- pages, auth


def test_auth_page_asks_for_a_token_and_filters_runs(auth_server, browser, screenshots):
    base = auth_server.base
    assert open_without_token(browser, base + "/") == "need-token"
    assert browser.evaluate("document.getElementById('token') === document.activeElement") is True
    shoot(browser, screenshots, "token")

    # A token a header cannot carry is refused before it is sent.
    browser.type_text("ckptd_tökén with spaces")
    browser.evaluate("document.getElementById('token-submit').click()")
    assert browser.evaluate("document.body.dataset.state") == "need-token"
    assert "printable ASCII" in browser.evaluate("document.getElementById('token-message').textContent")
    assert browser.evaluate("sessionStorage.getItem('ckptd.token')") is None
    browser.evaluate("document.getElementById('token').value = ''")

    # An unknown token is refused, and the form comes back saying so.
    browser.type_text("ckptd_not-a-token-anyone-has")
    browser.evaluate("document.getElementById('token-submit').click()")
    assert browser.wait_for_page() == "need-token"
    assert "refused" in browser.evaluate("document.getElementById('token-message').textContent")
    assert browser.evaluate("sessionStorage.getItem('ckptd.token')") is None

    # The reader sees only the runs it may read.
    browser.type_text(READER_TOKEN)
    browser.evaluate("document.getElementById('token-submit').click()")
    assert browser.wait_for_page() == "ready", browser.console()
    runs = browser.query("[...document.querySelectorAll('#runs tr.run')].map((r) => r.dataset.run)")
    with ckptd.Client(auth_server.address, token=ADMIN_TOKEN) as admin:
        every = sorted(r.name for r in admin.runs())
    assert every == sorted([ALPHA, ZETA])
    assert runs == [ALPHA]
    assert "signed in as viewer" in browser.evaluate("document.getElementById('identity').textContent")

    # The token stays in the tab across page loads.
    assert browser.navigate(f"{base}/runs/{ALPHA}") == "ready", browser.console()
    points = browser.evaluate("document.querySelectorAll('svg.chart[data-metric=\"loss\"] circle.point').length")
    assert points == sum(1 for _, m in MNIST_VERSIONS if "loss" in m)
    assert browser.evaluate("document.querySelectorAll('circle.point[data-best=\"true\"]').length") >= 1

    # A run it may not read: 403, shown with the server's reason.
    assert browser.navigate(f"{base}/runs/{ZETA}") == "error"
    assert browser.evaluate("document.body.dataset.httpStatus") == "403"
    message = browser.evaluate("document.getElementById('error-message').textContent")
    assert "viewer" in message and ZETA in message
    assert browser.navigate(f"{base}/runs/{ZETA}/versions/1") == "error"
    assert browser.evaluate("document.body.dataset.httpStatus") == "403"

    # Signing out forgets the token.
    assert browser.navigate(base + "/") == "ready"
    # (It reloads the page: mark the old document, as navigate() does.)
    browser.evaluate("document.body.dataset.state = 'navigating'; document.getElementById('sign-out').click()")
    assert browser.wait_for_page() == "need-token"


def test_auth_api_401_and_403(auth_server):
    status, body = auth_server.api("runs")
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    assert "credential" in body["error"]["message"]
    s, headers, _ = auth_server.request("/api/v1/runs")
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, body = auth_server.api("runs", token="ckptd_unknown")
    assert status == 401 and "not in ckptd's --auth_file" in body["error"]["message"]
    status, body = auth_server.api("runs", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert status == 401 and "Bearer TOKEN" in body["error"]["message"]

    status, body = auth_server.api("runs", token=READER_TOKEN)
    assert status == 200 and [r["name"] for r in body["runs"]] == [ALPHA] and body["identity"] == "viewer"
    for path in [f"runs/{ZETA}", f"runs/{ZETA}/versions", f"runs/{ZETA}/versions/1", f"runs/{ZETA}/metrics",
                 f"runs/{ZETA}/aliases", f"runs/{ZETA}/audit"]:  # fmt: skip
        status, body = auth_server.api(path, token=READER_TOKEN)
        assert status == 403 and body["error"]["code"] == "PERMISSION_DENIED", path
        assert "'viewer'" in body["error"]["message"] and ZETA in body["error"]["message"], path
        status, body = auth_server.api(path, token=ADMIN_TOKEN)
        assert status == 200, (path, body)
        status, body = auth_server.api(path)
        assert status == 401, path
    # The page itself holds no data and needs no token.
    status, _, page = auth_server.request("/")
    assert status == 200 and b"/assets/app.js" in page


# ---------------------------------------------------------------- the JSON API


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("runs?page_size=0", 400, "page_size='0' is not a whole number in 1-1000"),
        ("runs?page_size=1001", 400, "1-1000"),
        ("runs?page_size=-1", 400, "page_size"),
        ("runs?page_size=1e3", 400, "page_size"),
        ("runs?page_size=%zz", 400, "not valid URL encoding"),
        ("runs?page_token=bad%20name", 400, "page_token 'bad name' is not one this server returned"),
        ("runs?bogus=1", 400, "unknown query parameter 'bogus' for /api/v1/runs; it takes page_size, page_token"),
        ("runs?page_size=1&page_size=2", 400, "'page_size' is given more than once"),
        ("runs/bad%2Fname", 400, "run name 'bad%2Fname'"),
        ("runs/-dash", 400, "run name"),
        ("runs/" + "x" * 200, 400, "run name"),
        (f"runs/{MNIST}?x=1", 400, "it takes none"),
        (f"runs/{MNIST}/versions?page_token=zz", 400, "page_token 'zz'"),
        (f"runs/{MNIST}/versions?page_size=5000", 400, "1-1000"),
        (f"runs/{MNIST}/versions/0", 400, "versions start at 1"),
        (f"runs/{MNIST}/versions/no%20such", 400, "ref"),
        (f"runs/{MNIST}/versions/99", 404, "99"),
        (f"runs/{MNIST}/versions/nosuchalias", 404, "nosuchalias"),
        (f"runs/{MNIST}/versions/3?tensor_limit=0", 400, "tensor_limit='0'"),
        (f"runs/{MNIST}/versions/3?tensor_offset=x", 400, "tensor_offset='x'"),
        (f"runs/{MNIST}/metrics?metric=%01", 400, "control character"),
        (f"runs/{MNIST}/metrics?limit=20001", 400, "limit"),
        (f"runs/{MNIST}/aliases?limit=0", 400, "limit='0'"),
        (f"runs/{MNIST}/audit?limit=1001", 400, "1-1000"),
        ("runs/no-such-run/versions", 404, "no run named 'no-such-run'"),
        ("runs/no-such-run", 404, "no run named"),
        ("nothing", 404, "no endpoint /api/v1/nothing"),
        (f"runs/{MNIST}/versions/3/more", 404, "no endpoint"),
    ],
)
def test_api_bad_requests(open_server, path, status, words):
    got, body = open_server.api(path)
    assert got == status, (path, body)
    err = body["error"]
    assert err["http_status"] == status and err["code"] and words in err["message"], (path, err)


def test_api_refuses_writes_and_foreign_hosts(open_server):
    for method in ["POST", "PUT", "DELETE", "PATCH"]:
        status, headers, body = open_server.request("/api/v1/runs", method=method)
        assert status == 405 and headers.get("Allow") == "GET, HEAD", method
        assert b"read-only" in body
    # DNS rebinding: a page on another name that resolves to 127.0.0.1.
    status, _, body = open_server.request("/api/v1/runs", headers={"Host": "evil.example:80"})
    assert status == 403 and b"not a loopback name" in body
    for host in ["localhost", f"127.0.0.1:{open_server.http_port}", f"localhost:{open_server.http_port}"]:
        status, _, _ = open_server.request("/api/v1/runs", headers={"Host": host})
        assert status == 200, host
    status, headers, body = open_server.request("/api/v1/runs", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_api_headers_and_assets(open_server):
    status, headers, _ = open_server.request("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for name, kind in [("app.js", "text/javascript"), ("app.css", "text/css")]:
        status, headers, body = open_server.request(f"/assets/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body, name
    for path in ["/assets/nope.js", "/assets/index.html", "/favicon.ico", "/runs"]:
        status, _, _ = open_server.request(path)
        assert status == 404, path


def test_api_pages(open_server):
    # Runs, one per page.
    status, first = open_server.api("runs?page_size=1")
    assert status == 200 and len(first["runs"]) == 1 and first["next_page_token"]
    status, second = open_server.api(f"runs?page_size=1&page_token={first['next_page_token']}")
    assert status == 200 and len(second["runs"]) == 1 and second["next_page_token"] == ""
    assert sorted([first["runs"][0]["name"], second["runs"][0]["name"]]) == sorted([MNIST, BERT])
    # Versions, two per page.
    seen, token = [], ""
    while True:
        status, page = open_server.api(f"runs/{MNIST}/versions?page_size=2&page_token={token}")
        assert status == 200 and len(page["versions"]) <= 2
        seen += [v["version"] for v in page["versions"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(range(1, len(MNIST_VERSIONS) + 1))
    # Tensors, one per page.
    keys, offset = [], 0
    while offset is not None:
        status, page = open_server.api(f"runs/{MNIST}/versions/{MNIST_BEST}?tensor_limit=1&tensor_offset={offset}")
        assert status == 200 and page["tensor_count"] == 4 and len(page["tensors"]) == 1
        keys.append(page["tensors"][0]["key"])
        offset = page["next_tensor_offset"]
    assert sorted(keys) == sorted(["model.fc.weight", "model.fc.bias", "optimizer.state.0.exp_avg", XSS_KEY])
    # History limits keep the newest.
    status, all_events = open_server.api(f"runs/{MNIST}/aliases")
    status, newest = open_server.api(f"runs/{MNIST}/aliases?limit=1")
    assert newest["events"] == all_events["events"][-1:] and newest["truncated"] is True
    assert all_events["truncated"] is False
    status, audit = open_server.api(f"runs/{MNIST}/audit?limit=2")
    assert len(audit["events"]) == 2 and audit["truncated"] is True
    status, metrics = open_server.api(f"runs/{MNIST}/metrics?metric=loss")
    assert [p["version"] for p in metrics["points"]] == [i for i, (_, m) in enumerate(MNIST_VERSIONS, 1) if "loss" in m]


def test_api_run_and_version_fields(open_server):
    status, run = open_server.api(f"runs/{MNIST}")
    assert status == 200
    assert run["policy"]["monitor"] == "loss" and run["policy"]["mode"] == "min"
    assert run["best"] == MNIST_BEST and run["last"] == len(MNIST_VERSIONS)
    status, page = open_server.api(f"runs/{MNIST}/versions/{MNIST_BEST}")
    v = page["version"]
    assert v["step"] == MNIST_VERSIONS[MNIST_BEST - 1][0] and v["epoch"] == MNIST_BEST
    assert v["metrics"]["loss"] == MNIST_VERSIONS[MNIST_BEST - 1][1]["loss"]
    assert sorted(v["aliases"]) == ["best", "prod"]
    assert v["labels"]["note"] == XSS_LABEL and v["env"]["torch_version"]
    assert v["total_bytes"] == sum(t["byte_length"] for t in page["tensors"])
    assert v["uploaded_bytes"] > 0


# ---------------------------------------------------------------- flags


def _start_fails(tmp_path: Path, *flags: str) -> str:
    proc = subprocess.run(
        [ckptd_binary(), "--listen=127.0.0.1:0", f"--data_dir={tmp_path / 'data'}", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0, (flags, proc.stderr)
    return proc.stderr


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--http_listen=nonsense"], "--http_listen 'nonsense' is not HOST:PORT"),
        (["--http_listen=127.0.0.1:99999"], "does not end in a port in 0-65535"),
        (["--http_listen=127.0.0.1:"], "does not end in a port"),
        (["--http_listen=:8080"], "is not HOST:PORT"),
        (["--http_listen=example.com:8080"], "does not start with an IPv4 address or localhost"),
        (["--http_listen=127.0.0.256:8080"], "IPv4 address"),
        (["--http_listen=0.0.0.0:0"], "not a loopback address and there is no --auth_file"),
        (["--http_port_file=/tmp/x"], "--http_port_file needs --http_listen"),
    ],
)
def test_bad_flags(tmp_path, flags, words):
    assert words in _start_fails(tmp_path, *flags)


def test_off_loopback_with_auth_is_refused(tmp_path):
    auth = tmp_path / "auth"
    auth.write_text(f"ops admin * sha256:{'0' * 64}\n")
    err = _start_fails(tmp_path, f"--auth_file={auth}", "--http_listen=0.0.0.0:0")
    assert "clear text" in err and "TLS-terminating proxy" in err


def test_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _start_fails(tmp_path, f"--http_listen=127.0.0.1:{port}")
    assert f"cannot serve the web view on --http_listen '127.0.0.1:{port}'" in err


def test_http_listen_off_by_default_and_in_help():
    out = subprocess.run([ckptd_binary(), "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--http_listen  (default: \"\")" in out and "--http_port_file" in out


def test_beside_the_metrics_endpoint(tmp_path):
    """The web view and --metrics_listen are two civetweb servers in one
    process: both answer, and ckptd still shuts down cleanly."""
    import time
    import urllib.request

    from conftest import start_web_server

    metrics_port_file = tmp_path / "metrics.port"
    web = start_web_server(tmp_path, ["--metrics_listen=127.0.0.1:0", f"--metrics_port_file={metrics_port_file}"])
    try:
        deadline = time.monotonic() + 30
        while not metrics_port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics_port = int(metrics_port_file.read_text())
        status, body = web.api("runs")
        assert status == 200 and body["runs"] == []
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60) as resp:
            assert resp.status == 200 and b"ckptd_" in resp.read()
        status, _ = web.api("runs")
        assert status == 200
    finally:
        code = web.proc.stop()
    assert code == 0, web.proc.log()
