"""save(progress=...) / load(progress=...) against the session's server."""

from __future__ import annotations

import io
import sys

import pytest
import torch

import ckptd

from _util import assert_same


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _state(seed=0, n=3 << 20):
    g = torch.Generator().manual_seed(seed)
    return {"big": torch.randn(n // 4, generator=g), "small": torch.arange(10)}


def test_callable_sees_bytes_up_to_the_total(client, run_name):
    state = _state()
    calls = []
    client.save(run_name, state, step=1, progress=lambda done, total: calls.append((done, total)))
    assert calls, "no progress reported"
    assert calls[-1][0] == calls[-1][1] > 0
    assert all(0 <= d <= t for d, t in calls)
    # Reports are throttled (the client reports every chunk).
    assert len(calls) < 50

    loaded = []
    out = client.load(run_name, progress=lambda done, total: loaded.append((done, total)))
    assert_same(out, state)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    assert loaded[-1] == (nbytes, nbytes)


def test_load_into_reports_progress(client, run_name):
    model = torch.nn.Linear(512, 256)
    client.save(run_name, {"model": model.state_dict()}, step=1)
    calls = []
    fresh = torch.nn.Linear(512, 256)
    client.load_into(fresh, run_name, key="model", progress=lambda d, t: calls.append((d, t)))
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert calls[-1] == (nbytes, nbytes)
    assert torch.equal(fresh.weight, model.weight)


def test_unchanged_resave_reports_nothing_to_send(client, run_name, monkeypatch):
    state = _state(1)
    client.save(run_name, state, step=1)
    calls = []
    client.save(run_name, state, step=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 0)]

    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    client.save(run_name, state, step=3, progress=True)
    assert "0 B to send, 3.0 MiB already stored" in err.getvalue()


def test_true_draws_a_bar_only_on_a_terminal(client, run_name, monkeypatch):
    state = _state(2)
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    client.save(run_name, state, step=1, progress=True)
    text = err.getvalue()
    assert f"save {run_name} [" in text and "100%" in text and text.endswith("\n"), text
    err.truncate(0)
    client.load(run_name, progress=True)
    assert "100%" in err.getvalue()

    plain = io.StringIO()  # not a terminal: nothing drawn
    monkeypatch.setattr(sys, "stderr", plain)
    client.save(run_name, _state(3), step=2, progress=True)
    client.load(run_name, progress=True)
    assert plain.getvalue() == ""


def test_errors_from_the_callable_are_raised_after_the_save(client, run_name):
    def boom(done, total):
        raise ValueError("progress failed")

    with pytest.raises(ValueError, match="progress failed"):
        client.save(run_name, _state(4), step=1, progress=boom)
    # The save itself went through.
    assert client.get(run_name).step == 1
    with pytest.raises(ckptd.InvalidArgumentError):
        client.save(run_name, _state(4), step=2, progress="yes")
