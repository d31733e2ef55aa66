"""load(keys=..., map_location=...), and the CUDA paths (skipped without a GPU)."""

from __future__ import annotations

import collections

import pytest
import torch
from _util import RecordingNative, assert_same

import ckptd


def training_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 4,
        "extra": {"fc.weight": torch.ones(2), "list": [torch.zeros(1), torch.ones(1)]},
    }


def test_keys_fetch_only_the_selected_subtrees(client, run_name):
    state = training_state()
    client.save(run_name, state, step=1)
    recorder = RecordingNative(client._native)
    client._native = recorder

    loaded = client.load(run_name, "last", keys=["model"])
    assert list(loaded) == ["model"]
    assert_same(loaded["model"], state["model"])
    assert len(recorder.reads[-1]) == len(state["model"])  # only the model's tensors travelled

    reads = len(recorder.reads)
    loaded = client.load(run_name, "last", keys="epoch")
    assert loaded == {"epoch": 4}
    assert len(recorder.reads) == reads  # no tensor bytes fetched at all

    loaded = client.load(run_name, "last", keys=["model.0.weight", ("optimizer", "state", 0), "epoch"])
    assert list(loaded) == ["model", "optimizer", "epoch"]
    assert list(loaded["model"]) == ["0.weight"]
    assert type(loaded["model"]) is collections.OrderedDict
    assert list(loaded["optimizer"]) == ["state"] and list(loaded["optimizer"]["state"]) == [0]
    assert_same(loaded["optimizer"]["state"][0], state["optimizer"]["state"][0])

    # Dotted keys of stored names that contain dots.
    loaded = client.load(run_name, "last", keys=["extra.fc.weight", "extra.list.1"])
    assert_same(loaded["extra"], {"fc.weight": torch.ones(2), "list": [torch.ones(1)]})

    assert client.load(run_name, "last", keys=[]) == {}
    with pytest.raises(ckptd.NotFoundError, match="'model.9.weight'"):
        client.load(run_name, "last", keys=["model.9.weight"])
    with pytest.raises(ckptd.NotFoundError, match="'mod'"):
        client.load(run_name, "last", keys=["mod"])  # prefixes of a segment do not match


@pytest.mark.parametrize(
    "map_location",
    [None, "cpu", torch.device("cpu"), {"cpu": "cpu"}, {"cuda:0": "cpu"}, lambda t, loc: t],
    ids=["none", "str", "device", "dict-identity", "dict-cuda-to-cpu", "callable"],
)
def test_map_location_cpu_variants(client, run_name, map_location):
    state = training_state()
    client.save(run_name, state, step=1)
    loaded = client.load(run_name, "last", map_location=map_location)
    assert_same(loaded, state)
    assert all(t.device.type == "cpu" for t in loaded["model"].values())


def test_map_location_to_another_device_and_callable(client, run_name):
    state = {"w": torch.randn(3, 3), "n": 1}
    client.save(run_name, state, step=1)
    meta = client.load(run_name, "last", map_location="meta")
    assert meta["w"].device.type == "meta" and meta["w"].shape == (3, 3)
    meta = client.load(run_name, "last", map_location={"cpu": torch.device("meta")})
    assert meta["w"].device.type == "meta"
    doubled = client.load(run_name, "last", map_location=lambda t, loc: t * 2)
    assert torch.equal(doubled["w"], state["w"] * 2)
    kept = client.load(run_name, "last", map_location=lambda t, loc: None)
    assert torch.equal(kept["w"], state["w"])


def test_load_into_keeps_parameter_devices(client, run_name):
    # load_into goes to each parameter's own device; here a model whose
    # buffers and parameters all live on the CPU keeps them there.
    model = torch.nn.Linear(3, 3)
    client.save(run_name, {"model": model.state_dict()}, step=1)
    other = torch.nn.Linear(3, 3)
    client.load_into(other, run_name, "last", key="model")
    assert other.weight.device.type == "cpu"
    assert torch.equal(other.weight, model.weight)


class CallRecorder:
    """Wraps the client's native object and records the name of every call."""

    def __init__(self, native) -> None:
        self._native = native
        self.calls = []

    def __getattr__(self, name):
        attr = getattr(self._native, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)

        return call


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is not available")
@pytest.mark.parametrize(
    "map_location",
    ["cuda", "cuda:0", torch.device("cuda"), torch.device("cuda", 1), {"cpu": "cuda:0"}, {"cpu": torch.device("cuda")}],
    ids=["str", "str-index", "device", "device-index", "dict-str", "dict-device"],
)
def test_map_location_cuda_without_cuda_fails_before_any_download(client, run_name, map_location):
    client.save(run_name, {"w": torch.ones(256, 256)}, step=1)
    recorder = CallRecorder(client._native)
    client._native = recorder
    with pytest.raises(ckptd.InvalidArgumentError) as err:
        client.load(run_name, "last", map_location=map_location)
    message = str(err.value)
    assert "CUDA is not available" in message, message
    assert 'map_location="cpu"' in message, message
    assert recorder.calls == []  # refused before asking the server for anything
    # The same state loads fine to the CPU.
    assert torch.equal(client.load(run_name, "last", map_location="cpu")["w"], torch.ones(256, 256))


def test_map_location_bad_device_string(client, run_name):
    with pytest.raises(ckptd.InvalidArgumentError, match="map_location='gpu'"):
        client.load(run_name, "last", map_location="gpu")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device in this environment")


@needs_cuda
def test_cuda_round_trip(client, run_name):
    state = {"w": torch.randn(1024, 1024, device="cuda"), "small": torch.arange(10, device="cuda")}
    client.save(run_name, state, step=1)
    on_gpu = client.load(run_name, "last", map_location="cuda:0")
    assert on_gpu["w"].is_cuda and torch.equal(on_gpu["w"], state["w"])
    on_cpu = client.load(run_name, "last")
    assert torch.equal(on_cpu["small"], state["small"].cpu())
    model = torch.nn.Linear(8, 8).cuda()
    client.save(run_name, {"model": model.state_dict()}, step=2)
    fresh = torch.nn.Linear(8, 8).cuda()
    client.load_into(fresh, run_name, "last", key="model")
    assert fresh.weight.is_cuda and torch.equal(fresh.weight, model.weight)


@needs_cuda
def test_cuda_save_async_snapshot(client, run_name):
    w = torch.randn(512, 512, device="cuda")
    expected = w.cpu()
    handle = client.save_async(run_name, {"w": w}, step=1)
    w.fill_(3.0)
    handle.result(timeout=120)
    assert torch.equal(client.load(run_name, "last")["w"], expected)


def test_cuda_availability_is_reported():
    available = ckptd._native.cuda_available()
    assert isinstance(available, bool)
    if not torch.cuda.is_available():
        assert available is False
