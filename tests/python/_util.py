"""Helpers shared by the ckptd Python tests."""

from __future__ import annotations

import math
from typing import Any

import torch


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of ``t`` (contiguous), for bitwise comparison of any dtype
    (complex32 and bfloat16 included, NaNs compare equal to themselves)."""
    t = t.detach().cpu().resolve_conj().resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(actual: Any, expected: Any, path: str = "<root>") -> None:
    """Exact structural equality: same types (bool is not int, tuple is not
    list, OrderedDict is not dict), same key order, tensors with equal dtype,
    shape and bytes."""
    assert type(actual) is type(expected), f"{path}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(actual.keys()) == list(expected.keys()), f"{path}: keys {list(actual)} != {list(expected)}"
        for k in expected:
            assert type(k) is type(next(a for a in actual if a == k)), f"{path}: key type of {k!r}"
            assert_same(actual[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{path}.{i}")
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{path}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        assert tensor_bytes(actual) == tensor_bytes(expected), f"{path}: tensor bytes differ"
    elif isinstance(expected, float):
        assert actual == expected or (math.isnan(actual) and math.isnan(expected)), f"{path}: {actual} != {expected}"
        assert math.copysign(1, actual) == math.copysign(1, expected), f"{path}: sign of {actual}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def make_tensor(dtype: torch.dtype, shape=(3, 4), seed: int = 0) -> torch.Tensor:
    """Random values of any dtype torch 1.13 has."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype == torch.complex32:
        return torch.randn(shape, dtype=torch.complex64, generator=g).to(torch.complex32)
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=g)
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=torch.float64, generator=g).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, dtype=torch.int64, generator=g).to(dtype)


ALL_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.complex32,
    torch.complex64,
    torch.complex128,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
]


class RecordingNative:
    """Wraps a client's native object and records what read_tensors fetches."""

    def __init__(self, native) -> None:
        self._native = native
        self.reads = []

    def read_tensors(self, manifest, dests):
        self.reads.append(list(dests))
        return self._native.read_tensors(manifest, dests)

    def __getattr__(self, name):
        return getattr(self._native, name)
