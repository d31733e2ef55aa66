"""Training workflows: resume equivalence, last/best over an epoch loop."""

from __future__ import annotations

import collections

import torch
from _util import assert_same, tensor_bytes

import ckptd


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 16)
        self.bn = torch.nn.BatchNorm1d(16)  # buffers incl. int64 num_batches_tracked
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def make_training(seed: int = 0):
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    return model, optimizer, scheduler


def batch(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 6, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    return x, y


def train_steps(model, optimizer, scheduler, start: int, stop: int) -> None:
    model.train()
    for step in range(start, stop):
        x, y = batch(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_resume_is_bitwise_equivalent(client, run_name):
    # Reference: 20 uninterrupted steps.
    model, optimizer, scheduler = make_training()
    train_steps(model, optimizer, scheduler, 0, 20)
    reference = model.state_dict()

    # 10 steps, save, throw everything away.
    model, optimizer, scheduler = make_training()
    train_steps(model, optimizer, scheduler, 0, 10)
    client.save(
        run_name,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": 10,
        },
        step=10,
    )
    del model, optimizer, scheduler

    # Fresh objects (different init), load, 10 more steps.
    model, optimizer, scheduler = make_training(seed=123)
    state = client.load(run_name, "last")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    train_steps(model, optimizer, scheduler, state["step"], 20)

    resumed = model.state_dict()
    assert list(resumed) == list(reference)
    for name in reference:
        assert tensor_bytes(resumed[name]) == tensor_bytes(reference[name]), name
    assert scheduler.get_last_lr() == [0.05 * 0.5**5]


def test_last_and_best_over_epochs(client, run_name):
    policy = client.set_policy(run_name, monitor="val_loss", mode="min")
    assert policy.monitor == "val_loss" and policy.mode == "min"
    assert policy.keep_last is None

    model, optimizer, scheduler = make_training()
    # Fixed validation losses so that the minimum is in the middle.
    val_losses = [0.9, 0.7, 0.4, 0.55, 0.6, 0.8]
    snapshots = {}
    for epoch, val_loss in enumerate(val_losses):
        train_steps(model, optimizer, scheduler, epoch * 5, epoch * 5 + 5)
        snapshots[epoch] = collections.OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
        info = client.save(
            run_name,
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            step=(epoch + 1) * 5,
            epoch=epoch,
            metrics={"val_loss": val_loss, "val_acc": 1 - val_loss},
        )
        assert "last" in info.aliases

    best = client.get(run_name, "best")
    last = client.get(run_name, "last")
    assert best.epoch == 2 and best.metrics["val_loss"] == 0.4
    assert last.epoch == len(val_losses) - 1
    assert "best" in best.aliases and "last" in last.aliases

    versions = client.versions(run_name)
    assert [v.epoch for v in versions] == list(range(len(val_losses)))
    assert [v.version for v in versions] == sorted(v.version for v in versions)
    assert all(isinstance(v, ckptd.VersionInfo) for v in versions)

    fresh, _, _ = make_training(seed=99)
    result = client.load_into(fresh, run_name, "best", key="model")
    assert result.missing_keys == [] and result.unexpected_keys == [] and result.mismatched_keys == []
    assert result.version.epoch == 2
    assert_same(fresh.state_dict(), snapshots[2])

    # By number and by alias.
    client.set_alias(run_name, "candidate", best.version)
    assert client.get(run_name, "candidate").version == best.version
    assert client.load(run_name, best.version)["epoch"] == 2

    runs = {r.name: r for r in client.runs()}
    assert runs[run_name].best_version == best.version
    assert runs[run_name].last_version == last.version
    assert runs[run_name].version_count == len(val_losses)
    assert runs[run_name].policy.monitor == "val_loss"


def test_best_with_max_mode_and_missing_metric(client, run_name):
    client.set_policy(run_name, monitor="val_acc", mode="max")
    client.save(run_name, {"x": torch.ones(1)}, step=1, metrics={"val_acc": 0.5})
    client.save(run_name, {"x": torch.ones(1)}, step=2, metrics={"val_acc": 0.9})
    client.save(run_name, {"x": torch.ones(1)}, step=3)  # no metric: never best
    client.save(run_name, {"x": torch.ones(1)}, step=4, metrics={"val_acc": 0.7})
    assert client.get(run_name, "best").step == 2
    assert client.get(run_name, "last").step == 4
