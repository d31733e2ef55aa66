"""Tokens, TLS and mTLS from Python against a real ckptd with --auth_file."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch

import ckptd
from _sharded_util import private_server
from _util import assert_same

WRITER_TOKEN = "ckptd_python-writer-token-for-the-auth-tests-0001"
READER_TOKEN = "ckptd_python-reader-token-for-the-auth-tests-0002"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate
    (CN=trainer), made with the openssl tool."""
    d = tmp_path_factory.mktemp("pki")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca", cwd=d)
    for name, cn, ext in [
        ("server", "localhost", "subjectAltName=IP:127.0.0.1"),
        ("client", "trainer", "extendedKeyUsage=clientAuth"),
    ]:
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=d,
        )  # fmt: skip
    (d / "auth").write_text(
        "# python auth test\n"
        f"writer writer py-* sha256:{hashlib.sha256(WRITER_TOKEN.encode()).hexdigest()}\n"
        f"reader reader py-* sha256:{hashlib.sha256(READER_TOKEN.encode()).hexdigest()}\n"
        "trainer writer py-* cert:trainer\n"
    )
    return d


@pytest.fixture(scope="module")
def tls_server(pki, tmp_path_factory):
    proc = private_server(
        tmp_path_factory.mktemp("tls"),
        [f"--tls_cert={pki / 'server.pem'}", f"--tls_key={pki / 'server.key'}", f"--auth_file={pki / 'auth'}"],
    )
    yield proc
    proc.stop()


def _state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(64, 64, generator=g), "step": seed}


def test_token_and_ca_make_a_working_client(tls_server, pki):
    ca = (pki / "ca.pem").read_bytes()
    with ckptd.Client(tls_server.address, token=WRITER_TOKEN, root_certificates=ca) as c:
        state = _state(1)
        c.save("py-run", state, step=1)
        assert_same(c.load("py-run"), state)


def test_missing_or_unknown_tokens_are_unauthenticated(tls_server, pki, monkeypatch):
    monkeypatch.delenv("CKPTD_TOKEN", raising=False)
    ca = (pki / "ca.pem").read_text()
    with ckptd.Client(tls_server.address, root_certificates=ca) as c:
        with pytest.raises(ckptd.UnauthenticatedError, match="token"):
            c.runs()
    with ckptd.Client(tls_server.address, token="ckptd_nobody-has-this", root_certificates=ca) as c:
        with pytest.raises(ckptd.UnauthenticatedError, match="not in ckptd's --auth_file"):
            c.runs()


def test_a_reader_cannot_save_and_the_error_names_the_identity(tls_server, pki):
    with ckptd.Client(tls_server.address, token=READER_TOKEN, root_certificates=(pki / "ca.pem").read_text()) as c:
        with pytest.raises(ckptd.PermissionDeniedError, match="identity 'reader' has role reader"):
            c.save("py-reader", _state(2), step=1)
        with pytest.raises(ckptd.PermissionDeniedError, match="run patterns"):
            c.load("other-team-run")


def test_token_and_ca_come_from_the_environment(tls_server, pki, monkeypatch):
    monkeypatch.setenv("CKPTD_TOKEN", WRITER_TOKEN)
    monkeypatch.setenv("CKPTD_TLS_CA", str(pki / "ca.pem"))
    with ckptd.Client(tls_server.address) as c:
        c.save("py-env", _state(3), step=1)
        assert [r.name for r in c.runs()] == sorted(r.name for r in c.runs())
        assert "py-env" in [r.name for r in c.runs()]


def test_bad_tls_arguments_are_clear_errors(tls_server, pki, monkeypatch):
    with pytest.raises(ckptd.InvalidArgumentError, match="go together"):
        ckptd.Client(tls_server.address, client_certificate=(pki / "client.pem").read_text())
    with pytest.raises(ckptd.InvalidArgumentError, match="not PEM text"):
        ckptd.Client(tls_server.address, root_certificates=str(pki / "ca.pem"))
    monkeypatch.setenv("CKPTD_TLS_CA", str(pki / "no-such-file.pem"))
    with pytest.raises(ckptd.InvalidArgumentError, match="CKPTD_TLS_CA"):
        ckptd.Client(tls_server.address)


def test_mtls_client_certificate_is_the_identity(pki, tmp_path):
    proc = private_server(
        tmp_path / "mtls",
        [
            f"--tls_cert={pki / 'server.pem'}",
            f"--tls_key={pki / 'server.key'}",
            f"--tls_client_ca={pki / 'ca.pem'}",
            f"--auth_file={pki / 'auth'}",
        ],
    )
    try:
        with ckptd.Client(
            proc.address,
            root_certificates=(pki / "ca.pem").read_text(),
            client_certificate=(pki / "client.pem").read_text(),
            client_key=(pki / "client.key").read_bytes(),
        ) as c:
            state = _state(4)
            c.save("py-mtls", state, step=1)
            assert_same(c.load("py-mtls"), state)
        # Without a certificate the handshake fails: the server requires one.
        with ckptd.Client(proc.address, root_certificates=(pki / "ca.pem").read_text(), timeout=5, max_attempts=1) as c:
            with pytest.raises((ckptd.UnavailableError, ckptd.DeadlineExceededError)):
                c.runs()
    finally:
        proc.stop()
