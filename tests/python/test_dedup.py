"""Dedup on the wire: blobs the server already has do not travel again, and
VersionInfo.uploaded_bytes reports what did travel."""

from __future__ import annotations

import time

import torch
from _sharded_util import MiB


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _tensors(v)


def _nbytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(state))


def test_unchanged_512mib_state_uploads_almost_nothing_the_second_time(client, run_name, capsys):
    g = torch.Generator().manual_seed(7)
    state = {
        "model": {f"layers.{i}.weight": torch.randn(4096, 4096, generator=g) for i in range(8)},  # 8 x 64 MiB
        "biases": {f"layers.{i}.bias": torch.randn(4096, generator=g) for i in range(8)},  # packed together
        "step": 1000,
    }
    total = _nbytes(state)
    assert total >= 512 * MiB

    t0 = time.monotonic()
    first = client.save(run_name, state, step=1)
    t1 = time.monotonic()
    second = client.save(run_name, state, step=2)
    t2 = time.monotonic()

    assert first.total_bytes == second.total_bytes == total
    assert first.uploaded_bytes >= total, f"first push uploaded {first.uploaded_bytes} of {total} bytes"
    assert second.uploaded_bytes < 0.01 * total, f"unchanged push uploaded {second.uploaded_bytes} of {total} bytes"
    with capsys.disabled():
        print(f"\n[test_dedup] 512 MiB state: first push {t1 - t0:.2f} s ({first.uploaded_bytes / MiB:.1f} MiB), "
              f"unchanged push {t2 - t1:.2f} s ({second.uploaded_bytes} bytes uploaded)")

    # The deduplicated version is complete.
    loaded = client.load(run_name, second.version)
    for key in state["model"]:
        assert torch.equal(loaded["model"][key], state["model"][key]), key
    for key in state["biases"]:
        assert torch.equal(loaded["biases"][key], state["biases"][key]), key
    assert loaded["step"] == 1000


def test_fine_tune_with_frozen_backbone_uploads_only_the_head(client, run_name):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU()) for _ in range(6)])
    head = torch.nn.Linear(2048, 10)
    model = torch.nn.Sequential(backbone, head)  # 6 x 16 MiB backbone, 80 KiB head

    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = client.save(run_name, model.state_dict(), step=0)
    total = _nbytes(before)
    assert first.total_bytes == total and first.uploaded_bytes >= total

    # Fine-tune the head only.
    for p in backbone.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(8, 2048)), torch.randint(0, 10, (8,))).backward()
        opt.step()
    after = model.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed == ["1.weight", "1.bias"], changed
    head_bytes = sum(after[k].numel() * after[k].element_size() for k in changed)

    second = client.save(run_name, after, step=1)
    assert second.total_bytes == total
    # Only the head travels, plus at most the packed blob it shares with the
    # backbone's biases.
    assert second.uploaded_bytes >= head_bytes
    assert second.uploaded_bytes < head_bytes + 1 * MiB, (
        f"uploaded {second.uploaded_bytes} bytes for {head_bytes} changed head bytes"
    )
    assert second.uploaded_bytes < 0.01 * total

    loaded = client.load(run_name, second.version)
    for k, v in after.items():
        assert torch.equal(loaded[k], v), k


def test_identical_tensors_in_another_run_and_rank_are_not_uploaded_again(client, run_name):
    g = torch.Generator().manual_seed(3)
    state = {"w": torch.randn(4 * MiB, generator=g), "b": torch.randn(1000, generator=g)}  # 16 MiB + packed
    first = client.save(run_name + "-a", state, step=1)
    assert first.uploaded_bytes >= _nbytes(state)

    # Another run, two ranks holding the same replicated tensors (e.g. DDP).
    ranks = [client.save(run_name + "-b", state, step=1, rank=r, world_size=2) for r in range(2)]
    info = ranks[-1]
    assert info.state == "COMMITTED" and info.total_bytes == 2 * _nbytes(state)
    assert info.uploaded_bytes < 0.01 * info.total_bytes, f"uploaded {info.uploaded_bytes} bytes"
    both = client.load(run_name + "-b", info.version)
    assert torch.equal(both[0]["w"], state["w"]) and torch.equal(both[1]["b"], state["b"])
