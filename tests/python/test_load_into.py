"""load_into: strict / non-strict, prefixes, shape mismatches, DDP checkpoints."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _util import assert_same, tensor_bytes

import ckptd


class Net(torch.nn.Module):
    def __init__(self, classes: int = 3, head: str = "head") -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 8)
        self.norm = torch.nn.LayerNorm(8)
        setattr(self, head, torch.nn.Linear(8, classes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def snapshot(model):
    return collections.OrderedDict((k, v.clone()) for k, v in model.state_dict().items())


def test_exact_fit(client, run_name):
    torch.manual_seed(0)
    src = Net()
    client.save(run_name, {"model": src.state_dict(), "epoch": 1}, step=1)
    torch.manual_seed(1)
    dst = Net()
    res = client.load_into(dst, run_name, "last", key="model")
    assert isinstance(res, ckptd.LoadResult)
    assert (res.missing_keys, res.unexpected_keys, res.mismatched_keys) == ([], [], [])
    assert_same(dst.state_dict(), src.state_dict())
    # Parameters stay parameters, with autograd intact.
    assert all(p.requires_grad for p in dst.parameters())
    assert dst.body.weight.grad_fn is None


def test_whole_state_is_a_state_dict(client, run_name):
    src = Net()
    client.save(run_name, src.state_dict(), step=1)
    dst = Net()
    client.load_into(dst, run_name, 1)
    assert_same(dst.state_dict(), src.state_dict())


def test_changed_head_strict_and_non_strict(client, run_name):
    torch.manual_seed(0)
    src = Net(head="head")
    client.save(run_name, {"model": src.state_dict()}, step=1)

    dst = Net(head="classifier")
    before = snapshot(dst)
    with pytest.raises(ckptd.StateDictMismatchError) as err:
        client.load_into(dst, run_name, "last", key="model", strict=True)
    message = str(err.value)
    for name in ("classifier.weight", "classifier.bias", "head.weight", "head.bias"):
        assert name in message
    assert "missing" in message and "unexpected" in message
    assert err.value.missing_keys == ["classifier.weight", "classifier.bias"]
    assert err.value.unexpected_keys == ["head.weight", "head.bias"]
    assert isinstance(err.value, ckptd.InvalidArgumentError)
    assert isinstance(err.value, ckptd.CheckpointError)
    assert_same(dst.state_dict(), before)  # untouched

    res = client.load_into(dst, run_name, "last", key="model", strict=False)
    assert res.missing_keys == ["classifier.weight", "classifier.bias"]
    assert res.unexpected_keys == ["head.weight", "head.bias"]
    assert res.mismatched_keys == []
    assert torch.equal(dst.body.weight, src.body.weight)
    assert torch.equal(dst.classifier.weight, before["classifier.weight"])


def test_head_shape_mismatch(client, run_name):
    torch.manual_seed(0)
    src = Net(classes=3)
    client.save(run_name, {"model": src.state_dict()}, step=1)

    torch.manual_seed(5)
    dst = Net(classes=10)
    before = snapshot(dst)
    with pytest.raises(ckptd.InvalidArgumentError) as err:
        client.load_into(dst, run_name, "last", key="model")
    message = str(err.value)
    assert "head.weight" in message and "head.bias" in message
    assert "[3, 8]" in message and "[10, 8]" in message
    assert_same(dst.state_dict(), before)

    res = client.load_into(dst, run_name, "last", key="model", strict=False)
    assert res.mismatched_keys == ["head.weight", "head.bias"]
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert torch.equal(dst.head.weight, before["head.weight"])  # left as initialised
    assert torch.equal(dst.body.weight, src.body.weight)
    assert torch.equal(dst.norm.weight, src.norm.weight)


def test_dtype_conversion_and_key_errors(client, run_name):
    src = Net().double()
    client.save(run_name, {"model": src.state_dict()}, step=1)
    dst = Net()
    client.load_into(dst, run_name, "last", key="model")
    assert dst.body.weight.dtype == torch.float32
    assert torch.equal(dst.body.weight, src.body.weight.float())
    with pytest.raises(ckptd.NotFoundError):
        client.load_into(dst, run_name, "last", key="no_such_key")
    with pytest.raises(ckptd.InvalidArgumentError, match="not a state dict"):
        client.load_into(dst, run_name, "last", key="model.body.weight")
    with pytest.raises(ckptd.StateDictMismatchError):
        client.load_into(dst, run_name, "last")  # forgot key="model"


def test_strip_prefix(client, run_name):
    src = Net()
    prefixed = {"module." + k: v for k, v in src.state_dict().items()}
    client.save(run_name, {"model": prefixed}, step=1)
    dst = Net()
    with pytest.raises(ckptd.StateDictMismatchError, match="strip_prefix='module.'"):
        client.load_into(dst, run_name, "last", key="model")
    res = client.load_into(dst, run_name, "last", key="model", strip_prefix="module.")
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert_same(dst.state_dict(), src.state_dict())


DDP_SCRIPT = textwrap.dedent(
    """
    import collections, os, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import ckptd

    def make_model():
        return torch.nn.Sequential(collections.OrderedDict(
            body=torch.nn.Linear(4, 8), act=torch.nn.ReLU(), head=torch.nn.Linear(8, 2)))

    def worker(rank, world_size, address, run, port):
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        torch.manual_seed(0)
        model = make_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(rank)
        for _ in range(3):
            loss = ddp(torch.randn(5, 4, generator=g)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        client = ckptd.Client(address)
        if rank == 0:
            client.save(run, {"model": ddp.state_dict()}, step=3)
            np.savez(os.environ["REFERENCE_PATH"], **{k: v.numpy() for k, v in ddp.state_dict().items()})
        # Every rank also pushes its shard of a sharded version.
        info = client.save(run + "-sharded", {"rank": rank, "w": model.body.weight.detach() * (rank + 1)},
                           step=3, rank=rank, world_size=world_size)
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        address, run, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
        mp.spawn(worker, args=(2, address, run, port), nprocs=2, join=True)
    """
)


def plain_model(head: str = "head", classes: int = 2) -> torch.nn.Module:
    """The DDP script's model, unwrapped; optionally with a renamed or resized head."""
    return torch.nn.Sequential(
        collections.OrderedDict(
            [("body", torch.nn.Linear(4, 8)), ("act", torch.nn.ReLU()), (head, torch.nn.Linear(8, classes))]
        )
    )


@pytest.fixture(scope="module")
def ddp_checkpoint(server, tmp_path_factory):
    """Runs a 2-process gloo DDP training once for this module: (run name,
    rank 0's ``ddp.state_dict()`` as saved, keys prefixed ``module.``)."""
    from conftest import free_port

    tmp_path = tmp_path_factory.mktemp("ddp")
    run = f"ddp-plain-{os.getpid()}"
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    reference_path = tmp_path / "reference.npz"
    env = dict(os.environ, REFERENCE_PATH=str(reference_path), GLOO_SOCKET_IFNAME="lo")
    subprocess.run(
        [sys.executable, str(script), server.address, run, str(free_port())],
        env=env,
        check=True,
        timeout=300,
    )
    with np.load(reference_path) as npz:
        reference = {k: torch.from_numpy(npz[k]) for k in npz.files}
    assert sorted(reference) == sorted(
        "module." + k for k in ("body.weight", "body.bias", "head.weight", "head.bias")
    )
    return run, reference


def test_ddp_checkpoint_into_plain_model(client, ddp_checkpoint):
    run, reference = ddp_checkpoint
    torch.manual_seed(42)
    plain = plain_model()
    res = client.load_into(plain, run, "last", key="model", strip_prefix="module.")
    assert res.missing_keys == [] and res.unexpected_keys == [] and res.mismatched_keys == []
    for k, v in plain.state_dict().items():
        assert torch.equal(v, reference["module." + k]), k

    # The sharded version: both ranks' shards, or one of them.
    info = client.get(run + "-sharded", "last")
    assert info.world_size == 2 and info.state == "COMMITTED"
    assert sorted(s.rank for s in info.shards) == [0, 1]
    both = client.load(run + "-sharded", "last")
    assert sorted(both) == [0, 1]
    assert both[0]["rank"] == 0 and both[1]["rank"] == 1
    assert torch.equal(both[1]["w"], both[0]["w"] * 2)
    one = client.load(run + "-sharded", "last", rank=1, world_size=2)
    assert one["rank"] == 1
    with pytest.raises(ckptd.InvalidArgumentError, match="rank 5"):
        client.load(run + "-sharded", "last", rank=5)
    with pytest.raises(ckptd.InvalidArgumentError, match="rank"):
        client.load_into(plain, run + "-sharded", "last")


def test_ddp_checkpoint_into_plain_model_with_renamed_head(client, ddp_checkpoint):
    run, reference = ddp_checkpoint
    torch.manual_seed(7)
    plain = plain_model(head="classifier")
    before = snapshot(plain)

    with pytest.raises(ckptd.StateDictMismatchError) as err:
        client.load_into(plain, run, "last", key="model", strict=True, strip_prefix="module.")
    message = str(err.value)
    assert "missing keys (in the model, not in the checkpoint): ['classifier.weight', 'classifier.bias']" in message
    assert "unexpected keys (in the checkpoint, not in the model): ['head.weight', 'head.bias']" in message
    assert "strict=False" in message  # says how to load what fits
    assert err.value.missing_keys == ["classifier.weight", "classifier.bias"]
    assert err.value.unexpected_keys == ["head.weight", "head.bias"]
    assert err.value.mismatched_keys == []
    assert_same(plain.state_dict(), before)  # strict=True changed nothing

    res = client.load_into(plain, run, "last", key="model", strict=False, strip_prefix="module.")
    assert res.missing_keys == ["classifier.weight", "classifier.bias"]
    assert res.unexpected_keys == ["head.weight", "head.bias"]
    assert res.mismatched_keys == []
    assert torch.equal(plain.body.weight, reference["module.body.weight"])
    assert torch.equal(plain.body.bias, reference["module.body.bias"])
    assert torch.equal(plain.classifier.weight, before["classifier.weight"])
    assert torch.equal(plain.classifier.bias, before["classifier.bias"])


def test_ddp_checkpoint_into_plain_model_with_new_head_shape(client, ddp_checkpoint):
    """Transfer learning: shared layers load the DDP weights, the new
    (differently shaped) head keeps its initialisation."""
    run, reference = ddp_checkpoint
    torch.manual_seed(9)
    plain = plain_model(classes=5)
    before = snapshot(plain)

    with pytest.raises(ckptd.StateDictMismatchError) as err:
        client.load_into(plain, run, "last", key="model", strict=True, strip_prefix="module.")
    message = str(err.value)
    assert "shape mismatch" in message
    assert "head.weight: stored shape [2, 8], model [5, 8]" in message
    assert "head.bias: stored shape [2], model [5]" in message
    assert err.value.mismatched_keys == ["head.weight", "head.bias"]
    assert err.value.missing_keys == [] and err.value.unexpected_keys == []
    assert_same(plain.state_dict(), before)

    # Plain torch refuses this even with strict=False.
    stripped = collections.OrderedDict((k[len("module.") :], v) for k, v in reference.items())
    with pytest.raises(RuntimeError, match="size mismatch"):
        plain_model(classes=5).load_state_dict(stripped, strict=False)

    res = client.load_into(plain, run, "last", key="model", strict=False, strip_prefix="module.")
    assert res.mismatched_keys == ["head.weight", "head.bias"]
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert torch.equal(plain.head.weight, before["head.weight"])  # left as initialised
    assert torch.equal(plain.head.bias, before["head.bias"])
    assert tensor_bytes(plain.body.weight) == tensor_bytes(reference["module.body.weight"])  # bitwise
    assert tensor_bytes(plain.body.bias) == tensor_bytes(reference["module.body.bias"])
