"""Helpers of the multi-rank, resume and dedup tests -- and the rank worker.

As a module: deterministic per-rank states (`shard_state`), launching rank
processes (`launch_ranks`), reading their results, private `ckptd` servers
with extra flags (`private_server`), polling (`wait_until`).

As a script it is one training rank:

    python _sharded_util.py --address 127.0.0.1:PORT --run R --step S \
        --rank r --world-size w --out result.json [--dist-port P] [--gather]

It optionally joins a torch.distributed gloo group (MASTER_ADDR=127.0.0.1,
MASTER_PORT=P) and waits on a barrier so that all ranks save at once, builds
`shard_state(rank, seed, big_bytes)`, calls `ckptd.Client.save(..., rank=r,
world_size=w)` and writes what happened (the VersionInfo or the error's class,
code and message) to --out as JSON. With --gather the ranks all_gather their
results afterwards (each rank records the version every rank got).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

HERE = Path(__file__).resolve().parent
MiB = 1 << 20


# ---------------------------------------------------------------- states


def shard_state(rank: int, seed: int = 0, big_bytes: int = 2 * MiB) -> Dict[str, Any]:
    """A state dict that differs per rank in keys, shapes, dtypes and values.

    One float32 tensor of ``big_bytes`` (a blob of its own above the client's
    1 MiB packing threshold), small tensors of several dtypes (packed
    together), optimizer-like int-keyed state and plain values.
    """
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    big = torch.randn(big_bytes // 4, generator=g)
    model = collections.OrderedDict()
    model[f"layers.{rank}.weight"] = big.view(-1, 256) if big.numel() % 256 == 0 else big
    model[f"layers.{rank}.bias"] = torch.randn(64 + rank, generator=g)
    model["embed.weight"] = torch.randn(16, 8 + rank, generator=g).to(torch.bfloat16)
    model["norm.running_mean"] = torch.randn(32, generator=g, dtype=torch.float64)
    model["counts"] = torch.randint(0, 1000, (5 + rank,), generator=g, dtype=torch.int64)
    model["mask"] = torch.rand(7, generator=g) > 0.5
    return {
        "model": model,
        "optimizer": {
            "state": {rank: {"step": torch.tensor(float(10 * rank + 1)), "exp_avg": torch.randn(3, 3, generator=g)}},
            "param_groups": [{"lr": 0.01 * (rank + 1), "betas": (0.9, 0.999), "params": [rank]}],
        },
        "rank": rank,
        "name": f"shard-{rank}",
    }


def state_tensor_bytes(state: Any) -> int:
    """Sum of the tensor bytes of a nested state."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_tensor_bytes(v) for v in state)
    return 0


def state_tensor_count(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return 1
    if isinstance(state, dict):
        return sum(state_tensor_count(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_tensor_count(v) for v in state)
    return 0


# ---------------------------------------------------------------- processes


def rank_command(
    address: str,
    run: str,
    step: int,
    rank: int,
    world_size: int,
    out: Path,
    *,
    dist_port: Optional[int] = None,
    gather: bool = False,
    seed: int = 0,
    big_bytes: int = 2 * MiB,
    max_attempts: Optional[int] = None,
    ready: Optional[Path] = None,
) -> List[str]:
    cmd = [
        sys.executable,
        str(HERE / "_sharded_util.py"),
        f"--address={address}",
        f"--run={run}",
        f"--step={step}",
        f"--rank={rank}",
        f"--world-size={world_size}",
        f"--out={out}",
        f"--seed={seed}",
        f"--big-bytes={big_bytes}",
    ]
    if dist_port is not None:
        cmd.append(f"--dist-port={dist_port}")
    if gather:
        cmd.append("--gather")
    if max_attempts is not None:
        cmd.append(f"--max-attempts={max_attempts}")
    if ready is not None:
        cmd.append(f"--ready={ready}")
    return cmd


def rank_env() -> Dict[str, str]:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    # The rank imports ckptd from the same place as the test.
    import ckptd

    pkg_root = str(Path(ckptd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, str(HERE), env.get("PYTHONPATH", "")])
    return env


def launch_ranks(
    addresses: Sequence[str],
    run: str,
    step: int,
    out_dir: Path,
    **kwargs: Any,
) -> List[subprocess.Popen]:
    """Starts one rank process per address (rank i talks to addresses[i])."""
    world_size = len(addresses)
    env = rank_env()
    procs = []
    for rank, address in enumerate(addresses):
        log = open(out_dir / f"rank{rank}.log", "wb")
        cmd = rank_command(address, run, step, rank, world_size, result_path(out_dir, rank), **kwargs)
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def result_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}.json"


def read_result(out_dir: Path, rank: int) -> Optional[Dict[str, Any]]:
    path = result_path(out_dir, rank)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def rank_log(out_dir: Path, rank: int) -> str:
    try:
        return (out_dir / f"rank{rank}.log").read_text(errors="replace")[-4000:]
    except OSError:
        return "<no log>"


def wait_ranks(procs: Sequence[subprocess.Popen], out_dir: Path, timeout: float, ranks: Optional[Sequence[int]] = None) -> None:
    """Waits for the given ranks (default all) to exit 0; fails with their logs."""
    deadline = time.monotonic() + timeout
    for rank in ranks if ranks is not None else range(len(procs)):
        p = procs[rank]
        try:
            code = p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    q.kill()
            raise AssertionError(f"rank {rank} did not finish within {timeout}s; log:\n{rank_log(out_dir, rank)}")
        assert code == 0, f"rank {rank} exited with {code}; log:\n{rank_log(out_dir, rank)}"


def kill_all(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---------------------------------------------------------------- servers and polling


def private_server(tmp_path: Path, flags: Sequence[str] = ()) -> Any:
    """A started ckptd of this test's own (``conftest.ServerProcess``) over
    ``tmp_path/data``; ``stop()`` it when done. ``start()`` after a kill
    restarts it on the same port and data dir."""
    from conftest import ServerProcess, ckptd_binary

    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = ServerProcess(ckptd_binary(), tmp_path / "data", ["--shutdown_grace=2s", *flags])
    proc.start()
    return proc


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- the rank worker


def _info_dict(info: Any) -> Dict[str, Any]:
    return {
        "version": info.version,
        "state": info.state,
        "world_size": info.world_size,
        "shards": [s.rank for s in info.shards],
        "total_bytes": info.total_bytes,
        "uploaded_bytes": info.uploaded_bytes,
    }


def _worker(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dist-port", type=int)
    parser.add_argument("--gather", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big-bytes", type=int, default=2 * MiB)
    parser.add_argument("--max-attempts", type=int)
    parser.add_argument("--ready")
    args = parser.parse_args(argv)

    import ckptd

    dist = None
    if args.dist_port is not None:
        import torch.distributed as dist

        os.environ["MASTER_PORT"] = str(args.dist_port)
        dist.init_process_group("gloo", rank=args.rank, world_size=args.world_size)
    state = shard_state(args.rank, args.seed, args.big_bytes)
    kwargs = {} if args.max_attempts is None else {"max_attempts": args.max_attempts}
    client = ckptd.Client(args.address, timeout=30, **kwargs)
    if dist is not None:
        dist.barrier()  # all ranks save at once
    if args.ready:
        Path(args.ready).write_text("saving")
    started = time.monotonic()
    try:
        info = client.save(args.run, state, step=args.step, rank=args.rank, world_size=args.world_size,
                           metrics={"loss": 1.0 + args.rank})
        result: Dict[str, Any] = {"ok": True, **_info_dict(info)}
    except ckptd.CheckpointError as e:
        result = {"ok": False, "error": type(e).__name__, "code": e.code.name, "message": e.message}
    result["seconds"] = time.monotonic() - started
    if dist is not None and args.gather:
        gathered: List[Any] = [None] * args.world_size
        dist.all_gather_object(gathered, result.get("version"))
        result["all_versions"] = gathered
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(args.out)
    if dist is not None:
        if args.gather:
            dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
