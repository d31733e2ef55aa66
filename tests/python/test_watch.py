"""Client.watch (WatchRef as an iterator) and Client.alias_history, against
the session's real ckptd server."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
import torch

import ckptd


def _save(client, run, step, loss=None):
    metrics = {} if loss is None else {"val_loss": loss}
    return client.save(run, {"w": torch.full((4,), float(step))}, step=step, metrics=metrics)


def test_watch_yields_current_then_each_move(client, run_name):
    _save(client, run_name, 1)
    with client.watch(run_name, "last", timeout=10) as watch:
        first = next(watch)
        assert (first.run, first.version, first.step) == (run_name, 1, 1)
        _save(client, run_name, 2)
        _save(client, run_name, 3)
        assert [next(watch).version, next(watch).version] == [2, 3]
    assert watch.closed
    with pytest.raises(StopIteration):
        next(watch)


def test_watch_follows_a_user_alias_for_hot_reload(client, run_name):
    _save(client, run_name, 1)
    _save(client, run_name, 2)
    client.set_alias(run_name, "prod", 1)
    seen = []
    watch = client.watch(run_name, "prod", timeout=10)
    for info in watch:
        seen.append(info.version)
        state = client.load(run_name, info.version)
        assert torch.equal(state["w"], torch.full((4,), float(info.version)))
        if len(seen) == 1:
            client.set_alias(run_name, "prod", 2)
        else:
            break
    assert seen == [1, 2]
    watch.close()


def test_timeout_ends_the_iteration_when_nothing_moves(client, run_name):
    _save(client, run_name, 1)
    start = time.monotonic()
    versions = [info.version for info in client.watch(run_name, "last", timeout=0.5)]
    elapsed = time.monotonic() - start
    assert versions == [1]
    assert 0.4 <= elapsed < 5, elapsed


def test_breaking_out_of_the_loop_drops_and_cancels_the_stream(client, run_name):
    _save(client, run_name, 1)
    watch = client.watch(run_name, "last")
    ref = weakref.ref(watch)
    for info in watch:
        assert info.version == 1
        break
    del watch, info
    gc.collect()
    assert ref() is None
    # The server is not left with a stuck stream: more calls work at once.
    assert _save(client, run_name, 2).version == 2


def test_close_from_another_thread_stops_a_blocked_iteration(client, run_name):
    _save(client, run_name, 1)
    watch = client.watch(run_name, "last")
    assert next(watch).version == 1
    result = {}

    def consume():
        try:
            result["next"] = next(watch)
        except StopIteration:
            result["stopped"] = True

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.3)
    assert t.is_alive(), "next() should block while nothing moves"
    # The GIL is released while blocked: this thread keeps running.
    watch.close()
    t.join(5)
    assert not t.is_alive()
    assert result == {"stopped": True}


def test_watch_errors(client, run_name):
    with pytest.raises(ckptd.NotFoundError):
        next(client.watch(run_name + "-missing", "last", timeout=5))
    _save(client, run_name, 1)
    with pytest.raises(ckptd.InvalidArgumentError):
        next(client.watch(run_name, 1, timeout=5))
    with pytest.raises(ckptd.InvalidArgumentError):
        client.watch(run_name, "last", timeout=0)


def test_alias_history(client, run_name):
    _save(client, run_name, 1)
    _save(client, run_name, 2)
    client.set_alias(run_name, "prod", 1)
    client.set_alias(run_name, "prod", 2)
    client.delete_alias(run_name, "prod")
    prod = client.alias_history(run_name, "prod")
    assert [(e.alias, e.from_version, e.to_version) for e in prod] == [
        ("prod", None, 1),
        ("prod", 1, 2),
        ("prod", 2, None),
    ]
    assert all(isinstance(e, ckptd.AliasEvent) and e.run == run_name and e.at is not None for e in prod)
    everything = client.alias_history(run_name)
    assert {e.alias for e in everything} >= {"last", "prod"}
    last = [e.to_version for e in everything if e.alias == "last"]
    assert last == [1, 2]
