"""save_async: the snapshot is taken before it returns; errors surface."""

from __future__ import annotations

import gc
import logging
import threading
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


def test_save_async_holds_at_most_max_pending_saves_snapshots(client, run_name, monkeypatch):
    """Each pending save_async holds a full host copy of its state: with the
    uploads held back, a third save_async waits for a slot before it copies
    anything, so no more than ``max_pending_saves`` snapshots ever exist.

    Ordering is driven by events, not sleeps: an upload finishes only when
    the test releases it, and it releases one only after it has seen a
    save_async block."""
    bound = client.max_pending_saves
    assert bound == 2
    saves = 6
    cond = threading.Condition()
    counts = {"live": 0, "peak": 0, "blocked": 0}
    permits = threading.Semaphore(0)

    real_snapshot = ckptd._tree.snapshot

    def counting_snapshot(flat):
        real_snapshot(flat)
        with cond:
            counts["live"] += 1
            counts["peak"] = max(counts["peak"], counts["live"])
            cond.notify_all()

    monkeypatch.setattr(ckptd._tree, "snapshot", counting_snapshot)

    class GatedNative:
        """Uploads wait for a permit from the test."""

        def __init__(self, native):
            self._native = native

        def push(self, **kwargs):
            assert permits.acquire(timeout=120), "the test never released this upload"
            try:
                return self._native.push(**kwargs)
            finally:
                with cond:
                    counts["live"] -= 1  # the copy is dropped when push returns
                    cond.notify_all()

        def __getattr__(self, name):
            return getattr(self._native, name)

    class WatchedSlots:
        """The client's slot semaphore, noting each time a save_async has to wait."""

        def __init__(self, slots):
            self._slots = slots

        def acquire(self, *args, **kwargs):
            if self._slots.acquire(blocking=False):
                return True
            with cond:
                counts["blocked"] += 1
                cond.notify_all()
            return self._slots.acquire()

        def release(self):
            self._slots.release()

    client._native = GatedNative(client._native)
    client._save_slots = WatchedSlots(client._save_slots)

    handles = []
    failure = []
    finished = threading.Event()

    def trainer():
        try:
            for i in range(saves):
                handles.append(client.save_async(run_name, {"i": i, "w": torch.full((64, 64), float(i))}, step=i))
        except BaseException as e:  # reported by the test thread
            failure.append(e)
        finally:
            with cond:
                finished.set()
                cond.notify_all()

    thread = threading.Thread(target=trainer)
    thread.start()
    released = 0
    try:
        while True:
            with cond:
                progressed = cond.wait_for(lambda: finished.is_set() or counts["blocked"] > released, timeout=120)
                assert progressed, "save_async neither returned nor blocked"
                assert counts["live"] <= bound, counts
                if finished.is_set():
                    break
                # A save_async is waiting for a slot with `bound` snapshots alive.
                assert counts["live"] == bound, counts
                assert len(handles) == bound + released
            permits.release()  # let the oldest upload finish
            released += 1
    finally:
        for _ in range(saves):
            permits.release()
        thread.join(120)
    assert not thread.is_alive()
    assert not failure, failure
    assert counts["peak"] == bound, counts
    assert counts["blocked"] == saves - bound, counts
    infos = [h.result(timeout=120) for h in handles]
    assert [info.step for info in infos] == list(range(saves))
    assert client.load(run_name, "last")["i"] == saves - 1
    assert counts["live"] == 0


def test_max_pending_saves_is_validated(server):
    with pytest.raises(ckptd.InvalidArgumentError, match="max_pending_saves"):
        ckptd.Client(server.address, max_pending_saves=0)
    with ckptd.Client(server.address, max_pending_saves=1) as c:
        assert c.max_pending_saves == 1
