"""save_async: the snapshot is taken before it returns; errors surface."""

from __future__ import annotations

import gc
import logging
import time

import pytest
import torch
from _util import assert_same

import ckptd


def clone_state(state):
    if isinstance(state, dict):
        return type(state)((k, clone_state(v)) for k, v in state.items())
    if isinstance(state, torch.Tensor):
        return state.clone()
    return state


def test_mutating_right_after_save_async_does_not_change_what_is_stored(client, run_name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 16))  # 2 MiB: in-place blobs
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 512)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "view": model[0].weight.t()}
    expected = clone_state(state)
    expected["view"] = model[0].weight.detach().t().clone()

    handle = client.save_async(run_name, state, step=1, metrics={"loss": 1.0})
    assert isinstance(handle, ckptd.SaveHandle)
    # Mutate everything at once, in place.
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    for s in optimizer.state.values():
        for v in s.values():
            v.fill_(-1.0)
    info = handle.result(timeout=120)
    assert handle.done()
    assert isinstance(info, ckptd.VersionInfo) and info.state == "COMMITTED"

    loaded = client.load(run_name, info.version)
    assert_same(loaded["model"], expected["model"])
    assert_same(loaded["optimizer"], expected["optimizer"])
    assert torch.equal(loaded["view"], expected["view"])
    assert not torch.equal(loaded["model"]["0.weight"], model[0].weight.detach())


def test_async_saves_upload_in_call_order(client, run_name):
    handles = [client.save_async(run_name, {"i": i, "w": torch.full((100,), float(i))}, step=i) for i in range(5)]
    infos = [h.result(timeout=120) for h in handles]
    assert [i.step for i in infos] == list(range(5))
    assert [i.version for i in infos] == sorted(i.version for i in infos)
    assert client.get(run_name, "last").step == 4
    assert client.load(run_name, "last")["i"] == 4


def test_async_failure_is_raised_from_result(client):
    handle = client.save_async("bad name!", {"w": torch.ones(3)}, step=1)
    with pytest.raises(ckptd.InvalidArgumentError, match="bad name!"):
        handle.result(timeout=60)
    assert handle.done()
    assert isinstance(handle.exception(), ckptd.InvalidArgumentError)


def test_unretrieved_async_failure_is_logged(client, caplog):
    caplog.set_level(logging.ERROR, logger="ckptd")
    handle = client.save_async("bad name!", {"w": torch.ones(3)}, step=7)
    deadline = time.monotonic() + 60
    while not handle.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handle.done()
    del handle
    gc.collect()
    assert any("step 7 failed" in r.getMessage() for r in caplog.records)


def test_close_waits_for_pending_uploads(server, run_name):
    client = ckptd.Client(server.address)
    handle = client.save_async(run_name, {"w": torch.randn(256, 1024)}, step=1)
    client.close()
    assert handle.done()
    assert handle.result().version >= 1
    # The client stays usable after close().
    with ckptd.Client(server.address) as c:
        assert c.get(run_name, "last").step == 1
