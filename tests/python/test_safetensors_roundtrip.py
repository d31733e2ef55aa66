"""`ckpt pull` then `ckpt push` keeps the key paths, and pulled files are
aligned: against the session's server, with real torch modules.

The CLI binary is $CKPTD_BUILD_DIR/client/cli/ckpt (ctest sets the build dir).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from _util import tensor_bytes

# Element sizes of the safetensors dtypes the tests use.
_ITEMSIZE = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}


def _ckpt_binary() -> str:
    build = os.environ.get("CKPTD_BUILD_DIR", "")
    binary = os.path.join(build, "client", "cli", "ckpt")
    if not build or not os.access(binary, os.X_OK):
        pytest.skip("CKPTD_BUILD_DIR/client/cli/ckpt not built (ctest sets CKPTD_BUILD_DIR)")
    return binary


def _ckpt(server, *args: str) -> str:
    result = subprocess.run(
        [_ckpt_binary(), "--server", server.address, *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"ckpt {' '.join(args)}: {result.stderr}"
    return result.stdout


def _read_safetensors(path: Path):
    """(header dict, data offset) with nothing but the format description."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return raw, header, 8 + n


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1), torch.nn.BatchNorm1d(1))


def _key_paths(client, run, ref="last"):
    manifest = client._native.get_version(run, str(ref), True, [])
    return [tuple(e[0]) for e in manifest.entries(0) if e[1] == 2]


def test_pull_then_push_keeps_the_key_paths(client, server, run_name, tmp_path):
    model = _model()
    client.save(run_name, {"model": model.state_dict(), "opt": {"state": {0: {"m": torch.ones(3)}}}}, step=1)
    pulled = tmp_path / "pulled.safetensors"
    _ckpt(server, "pull", f"{run_name}@1", "-o", str(pulled))
    other = run_name + "-copy"
    _ckpt(server, "push", other, str(pulled), "--step", "7")

    assert _key_paths(client, other) == _key_paths(client, run_name)
    assert ("model", "0.weight") in _key_paths(client, other)
    assert ("opt", "state", 0, "m") in _key_paths(client, other)
    original = client.load(run_name)
    copied = client.load(other)
    assert list(copied["model"]) == list(original["model"])
    for name, t in original["model"].items():
        assert copied["model"][name].dtype == t.dtype
        assert tensor_bytes(copied["model"][name]) == tensor_bytes(t), name
    assert tensor_bytes(copied["opt"]["state"][0]["m"]) == tensor_bytes(torch.ones(3))

    fresh = _model()
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    result = client.load_into(fresh, other, key="model")
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    for name, t in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name

    # A second pull of the copy: the same names and bytes as the first file.
    again = tmp_path / "again.safetensors"
    _ckpt(server, "pull", f"{other}@last", "-o", str(again))
    raw1, h1, d1 = _read_safetensors(pulled)
    raw2, h2, d2 = _read_safetensors(again)
    names = sorted(k for k in h1 if k != "__metadata__")
    assert names == sorted(k for k in h2 if k != "__metadata__")
    for k in names:
        b1, e1 = h1[k]["data_offsets"]
        b2, e2 = h2[k]["data_offsets"]
        assert raw1[d1 + b1 : d1 + e1] == raw2[d2 + b2 : d2 + e2], k


def test_a_flat_file_from_another_writer_keeps_its_dotted_names(client, server, run_name, tmp_path):
    model = _model()
    # A .safetensors as other tools write it: a flat state dict, no ckptd metadata.
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    header, data = {}, b""
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    for k, v in tensors.items():
        raw = tensor_bytes(v)
        header[k] = {"dtype": dtypes[v.dtype], "shape": list(v.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "flat.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    _ckpt(server, "push", run_name, str(path), "--step", "1")

    assert _key_paths(client, run_name) == [(k,) for k in tensors]
    fresh = _model()
    result = client.load_into(fresh, run_name)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    for name, t in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name


def test_pulled_tensors_are_aligned_and_the_file_loads(client, server, run_name, tmp_path):
    state = {
        "odd_u8": torch.arange(7, dtype=torch.uint8),
        "f32": torch.randn(4, 3),
        "f16_odd": torch.randn(3).half(),
        "i64": torch.arange(5),
        "bf16": torch.randn(10).bfloat16(),
        "f32_odd": torch.randn(3),
        "flag": torch.tensor([True, False, True]),
        "f64": torch.randn(2, dtype=torch.float64),
    }
    client.save(run_name, state, step=1)
    path = tmp_path / "aligned.safetensors"
    _ckpt(server, "pull", run_name, "-o", str(path))
    raw, header, data_start = _read_safetensors(path)
    assert data_start % 8 == 0
    ranges = []
    for name, t in state.items():
        entry = header[name]
        begin, end = entry["data_offsets"]
        absolute = data_start + begin
        if (end - begin) % 8 == 0:
            assert absolute % 8 == 0, (name, absolute)
        assert absolute % _ITEMSIZE[entry["dtype"]] == 0, (name, absolute)
        # Each tensor reads back in place (the file loads).
        assert raw[absolute : data_start + end] == tensor_bytes(t), name
        ranges.append((begin, end))
    # No holes: the format (and its reference reader) allow none.
    ranges.sort()
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert data_start + ranges[-1][1] == len(raw)
    # ...and ckpt push reads it back to the same state.
    _ckpt(server, "push", run_name, str(path), "--step", "2")
    back = client.load(run_name)
    assert list(back) == list(state)
    for name, t in state.items():
        assert tensor_bytes(back[name]) == tensor_bytes(t), name
