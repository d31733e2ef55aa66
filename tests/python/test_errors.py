"""Bad input, unknown names, a dead server: clear errors, nothing stored."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import free_port

import ckptd


def committed_versions(client, run):
    try:
        return client.versions(run)
    except ckptd.NotFoundError:
        return []


class Opaque:
    pass


@pytest.mark.parametrize(
    "state, path, what",
    [
        ({"model": {"w": torch.ones(2)}, "cfg": Opaque()}, "cfg", "Opaque"),
        ({"hooks": [1, {"fn": lambda x: x}]}, "hooks.1.fn", "function"),
        ({"a": {"b": (torch.ones(1), object())}}, "a.b.1", "object"),
        ({"x": np.float64(1.5)}, "x", "float64"),
        ({"x": np.ones(3)}, "x", "ndarray"),
        ({"x": {1, 2}}, "x", "set"),
        ({"x": b"bytes"}, "x", "bytes"),
        ({"s": torch.Size([2, 3])}, "s", "Size"),
        ({"big": [1, 2**70]}, "big.1", "64 bits"),
        ({"big_key": {2**64: 1}}, "big_key.18446744073709551616", "64 bits"),
        ({"m": {1.5: "a"}}, "'m'", "float"),
        ({"m": {(1, 2): "a"}}, "'m'", "tuple"),
        ({"m": {True: "a"}}, "'m'", "bool"),
        ({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}, "q", "qint8"),
        ({"sp": torch.eye(3).to_sparse()}, "sp", "sparse"),
    ],
    ids=[
        "object",
        "lambda",
        "object-in-tuple",
        "numpy-scalar",
        "ndarray",
        "set",
        "bytes",
        "torch-size",
        "int-too-big",
        "key-too-big",
        "float-key",
        "tuple-key",
        "bool-key",
        "quantized",
        "sparse",
    ],
)
def test_unsupported_input_names_the_path_and_stores_nothing(client, run_name, state, path, what):
    client.save(run_name, {"ok": torch.ones(1)}, step=1)
    before = committed_versions(client, run_name)
    with pytest.raises(ckptd.InvalidArgumentError) as err:
        client.save(run_name, state, step=2)
    assert path in str(err.value) and what in str(err.value)
    assert err.value.code == ckptd.StatusCode.INVALID_ARGUMENT
    assert isinstance(err.value, ValueError)
    with pytest.raises(ckptd.InvalidArgumentError):
        client.save_async(run_name, state, step=2)  # raised at once, nothing queued
    assert committed_versions(client, run_name) == before


def test_reference_cycle_is_refused(client, run_name):
    state = {"a": [1, torch.ones(1)]}
    state["a"].append(state)
    with pytest.raises(ckptd.InvalidArgumentError, match="nests deeper than 64"):
        client.save(run_name, state, step=1)


def test_unsupported_leaf_in_a_new_run_creates_no_version(client, run_name):
    with pytest.raises(ckptd.InvalidArgumentError, match="'cfg'"):
        client.save(run_name, {"cfg": Opaque()}, step=1)
    assert committed_versions(client, run_name) == []
    with pytest.raises(ckptd.NotFoundError):
        client.get(run_name, "last")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c, r: c.save(r, torch.ones(2)), "must be a dict"),
        (lambda c, r: c.save(r, {}, metrics={"loss": "low"}), "metric 'loss'"),
        (lambda c, r: c.save(r, {}, labels={"k": object()}), "label 'k'"),
        (lambda c, r: c.save(r, {}, rank=2, world_size=2), "rank 2"),
        (lambda c, r: c.save(r, {}, step=1.5), "step"),
        (lambda c, r: c.load(r, 0), "start at 1"),
        (lambda c, r: c.load(r, True), "ref"),
        (lambda c, r: c.load(r, ""), "ref is empty"),
        (lambda c, r: c.load(r, "last", map_location=3), "map_location"),
        (lambda c, r: c.set_policy(r, monitor="loss", mode="lowest"), "mode"),
        (lambda c, r: c.save("bad name!", {}), "bad name!"),
        (lambda c, r: c.save("", {}), ""),
    ],
    ids=[
        "tensor-root",
        "metric",
        "label",
        "rank",
        "step-float",
        "version-0",
        "ref-bool",
        "ref-empty",
        "map-location",
        "mode",
        "run-name",
        "empty-run-name",
    ],
)
def test_invalid_arguments(client, run_name, call, match):
    with pytest.raises(ckptd.InvalidArgumentError, match=match):
        call(client, run_name)


def test_unknown_run_version_alias(client, run_name):
    with pytest.raises(ckptd.NotFoundError) as err:
        client.load(run_name, "last")
    assert run_name in str(err.value)
    assert err.value.code == ckptd.StatusCode.NOT_FOUND
    assert isinstance(err.value, ckptd.CheckpointError) and isinstance(err.value, LookupError)
    with pytest.raises(ckptd.NotFoundError):
        client.get(run_name, "last")
    with pytest.raises(ckptd.NotFoundError):
        client.versions(run_name)

    client.save(run_name, {"w": torch.ones(2)}, step=1)
    with pytest.raises(ckptd.NotFoundError):
        client.load(run_name, 99)
    with pytest.raises(ckptd.NotFoundError):
        client.load(run_name, "prod")
    with pytest.raises(ckptd.NotFoundError, match="best"):
        client.load(run_name, "best")  # no policy, no best
    with pytest.raises(ckptd.NotFoundError, match="'nope'"):
        client.load(run_name, "last", keys=["nope"])
    with pytest.raises(ckptd.NotFoundError):
        client.load_into(torch.nn.Linear(2, 2), run_name, "best")


def test_server_down_fails_fast(run_name):
    address = f"127.0.0.1:{free_port()}"  # nothing listens here
    client = ckptd.Client(address, timeout=2, max_attempts=2)
    for call in (
        lambda: client.save(run_name, {"w": torch.ones(4)}, step=1),
        lambda: client.load(run_name, "last"),
        lambda: client.versions(run_name),
        lambda: client.runs(),
    ):
        start = time.monotonic()
        with pytest.raises((ckptd.UnavailableError, ckptd.DeadlineExceededError)) as err:
            call()
        assert time.monotonic() - start < 15
        assert err.value.code in (ckptd.StatusCode.UNAVAILABLE, ckptd.StatusCode.DEADLINE_EXCEEDED)
        assert err.value.message

    handle = client.save_async(run_name, {"w": torch.ones(4)}, step=1)
    with pytest.raises((ckptd.UnavailableError, ckptd.DeadlineExceededError)):
        handle.result(timeout=30)
    assert handle.done()
    client.close()


def test_default_address_from_environment(monkeypatch, server, run_name):
    monkeypatch.setenv("CKPTD_SERVER", server.address)
    client = ckptd.Client()
    assert client.address == server.address
    client.save(run_name, {"x": 1}, step=1)
    assert client.load(run_name) == {"x": 1}
    monkeypatch.delenv("CKPTD_SERVER")
    assert ckptd.Client().address == "127.0.0.1:50051"
