"""The ckptd._native boundary: entry validation, error translation, the GIL."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import ckptd
from ckptd import _native, _tree


def test_dtype_codes_match_the_proto():
    assert _native.DTYPES["FLOAT32"] == 1 and _native.DTYPES["BOOL"] == 13
    for dtype, code in _tree.DTYPE_CODES.items():
        assert _native.dtype_size(code) == torch.empty((), dtype=dtype).element_size(), dtype
    assert _native.CONTAINER_KINDS == {"DICT": 1, "ORDERED_DICT": 2, "LIST": 3, "TUPLE": 4} or (
        "COUNTER" in _native.CONTAINER_KINDS
    )


@pytest.mark.parametrize(
    "entries, match",
    [
        ([("not-a-tuple",)], "entry 0"),
        ([((), 0, 1), (("a",), 9, 1)], "malformed entry"),
        ([((), 0, 77)], "container kind"),
        ([((), 0, 1), (("a",), 2, 99, (1,), 0, 4, -1)], "unknown dtype"),
        ([((), 0, 1), ((1.5,), 1, None)], "str or int"),
        ([((), 0, 1), (("v",), 1, object())], "unsupported value"),
        ([((), 0, 1), (("v",), 1, 2**64)], "64 bits"),
        ([((), 0, 1), (("t",), 2, 1, (2,), 0, 8, -1)], "no data"),
        ([((), 0, 1), (("t",), 2, 1, (2,), 1234, 4, -1)], "byte"),
    ],
    ids=["not-tuple", "bad-kind", "container-kind", "dtype", "segment", "value", "big-int", "null-data", "length"],
)
def test_malformed_entries_are_invalid_argument(client, run_name, entries, match):
    with pytest.raises(ckptd.InvalidArgumentError, match=match):
        client._native.push(run_name, 1, 0, 0, 1, {}, {}, {}, entries)


def test_error_translation_carries_code_and_message(client, run_name):
    with pytest.raises(ckptd.NotFoundError) as err:
        client._native.get_version(run_name, "last", True, [])
    assert err.value.code is ckptd.StatusCode.NOT_FOUND
    assert run_name in err.value.message
    assert "NotFoundError" in repr(err.value) and "NOT_FOUND" in repr(err.value)
    e = ckptd.errors.error_from_status(99, "WEIRD", "msg")
    assert isinstance(e, ckptd.errors.UnknownError) and "WEIRD" in str(e)


class _Tracer:
    """Wraps the native client; records the interval spent inside each call."""

    def __init__(self, native) -> None:
        self._native = native
        self.inside = False
        self.spans = []

    def _timed(self, name, *args):
        self.inside = True
        start = time.monotonic()
        try:
            return getattr(self._native, name)(*args)
        finally:
            self.spans.append((start, time.monotonic()))
            self.inside = False

    def push(self, **kwargs):
        self.inside = True
        start = time.monotonic()
        try:
            return self._native.push(**kwargs)
        finally:
            self.spans.append((start, time.monotonic()))
            self.inside = False

    def read_tensors(self, *args):
        return self._timed("read_tensors", *args)

    def __getattr__(self, name):
        return getattr(self._native, name)


@pytest.mark.parametrize("operation", ["save", "load"])
def test_gil_is_released_during_network_calls(client, run_name, operation):
    state = {f"w{i}": torch.randn(1024, 1024) for i in range(48)}  # 192 MiB
    if operation == "load":
        client.save(run_name, state, step=1)
    tracer = _Tracer(client._native)
    client._native = tracer
    seen = []
    worker = threading.Thread(
        target=(lambda: client.save(run_name, state, step=2))
        if operation == "save"
        else (lambda: client.load(run_name, "last"))
    )
    worker.start()
    while worker.is_alive():
        if tracer.inside:
            seen.append(time.monotonic())
    worker.join()
    (start, end), = tracer.spans
    # With the GIL held in C++ this thread could not run during the call.
    assert seen, "the main thread never ran while the native call was in progress"
    assert seen[-1] - seen[0] > 0.5 * (end - start), (seen[0], seen[-1], start, end)
