"""Integrity through the real client and server: a byte flipped in a stored
blob file is found by a read, the next save of the same state uploads the
damaged bytes again, and afterwards the old version and the new one load
back bit-identical. Also ``delete_version(force=True)`` of ``best``/``last``.

The blob files are found by what a save adds under ``<data-dir>/blobs``: the
session server is shared, but tests run one at a time and these states are
random, so the new files are this test's."""

from __future__ import annotations

from pathlib import Path
from typing import Set

import pytest
import torch

import ckptd
from _util import assert_same


def blob_files(data_dir: Path) -> Set[Path]:
    return {p for p in (data_dir / "blobs").glob("*/*") if p.is_file()}


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def make_state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {
        # 2 MiB: a blob of its own (tensors under 1 MiB are packed).
        "model": {"w": torch.randn(512 * 1024, generator=g), "b": torch.randn(7, generator=g)},
        "epoch": 3,
    }


def test_flipped_byte_then_resave_heals_both_versions(server, client, run_name):
    state = make_state(1)
    before = blob_files(server.data_dir)
    v1 = client.save(run_name, state, step=1)
    added = sorted(blob_files(server.data_dir) - before, key=lambda p: p.stat().st_size)
    assert added, "the save stored no new blob file"
    w_blob = added[-1]  # the 2 MiB tensor's blob
    assert w_blob.stat().st_size > 2 * 1024 * 1024
    flip_byte(w_blob, 1_500_000)

    with pytest.raises(ckptd.DataLossError) as err:
        client.load(run_name, v1.version)
    message = str(err.value)
    assert f"{run_name}@{v1.version}" in message
    assert "model.w" in message
    assert str(server.data_dir) not in message
    assert "/blobs/" not in message
    # The other keys of the damaged version still load.
    partial = client.load(run_name, v1.version, keys=["model.b"])
    assert torch.equal(partial["model"]["b"], state["model"]["b"])

    # The same state again: the damaged blob is sent again (it no longer
    # counts as stored), the intact ones are not.
    v2 = client.save(run_name, state, step=2)
    w_bytes = state["model"]["w"].numel() * 4
    assert w_bytes <= v2.uploaded_bytes < w_bytes + 64 * 1024, v2
    assert_same(client.load(run_name, v1.version), state)
    assert_same(client.load(run_name, v2.version), state)
    # Healed: a third save sends nothing.
    v3 = client.save(run_name, state, step=3)
    assert v3.uploaded_bytes == 0, v3


def test_force_delete_of_a_damaged_best(server, client, run_name):
    client.set_policy(run_name, monitor="loss", mode="min")
    infos = []
    for step, loss in [(1, 0.5), (2, 0.1), (3, 0.9)]:
        before = blob_files(server.data_dir)
        infos.append(client.save(run_name, make_state(10 + step), step=step, metrics={"loss": loss}))
        if step == 2:
            best_blobs = blob_files(server.data_dir) - before
    assert client.get(run_name, "best").version == infos[1].version
    for p in best_blobs:
        flip_byte(p, 10)
    with pytest.raises(ckptd.DataLossError):
        client.load(run_name, "best")

    with pytest.raises(ckptd.FailedPreconditionError) as err:
        client.delete_version(run_name, "best")
    assert "--force" in str(err.value)
    client.delete_version(run_name, "best", force=True)
    assert client.get(run_name, "best").version == infos[0].version
    assert client.get(run_name, "last").version == infos[2].version
    assert [v.version for v in client.versions(run_name)] == [infos[0].version, infos[2].version]
    events = [(e.alias, e.from_version, e.to_version) for e in client.alias_history(run_name, "best")]
    assert events[-1] == ("best", infos[1].version, infos[0].version)
    # Nothing damaged is left, and the damaged files are gone with it.
    assert_same(client.load(run_name, "best"), make_state(11))
    assert not any(p.exists() for p in best_blobs)
