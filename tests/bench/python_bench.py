#!/usr/bin/python3
"""python_bench: the Python client against a local ckptd, with torch.save /
torch.load / dd baselines measured in the same run on the same disk.

    /usr/bin/python3 tests/bench/python_bench.py --ckptd build/server/ckptd
    (or CKPTD_BINARY=... ; PYTHONPATH must reach the ckptd package, e.g.
     build/python -- the script adds <ckptd dir>/../python by itself)

It starts its own ckptd on a free loopback port with its data dir under
--dir (default: a new temporary directory), where the torch.save and dd
files are written as well, and prints one table:

  (a) first push of a ~1 GiB state (16 x 64 MiB float32, random) and a
      second, unchanged push of it (dedup): times and ratio;
  (b) one version pushed by 4 rank processes (256 MiB shard each) vs one
      rank pushing 1 GiB: GB/s of each and ratio;
  (c) baselines: torch.save + fsync and `dd if=/dev/zero bs=4M count=256
      conv=fdatasync` into the same directory; ckptd save vs torch.save,
      ckptd load vs torch.load, save_async blocking time vs one clone of the
      state; also 10,000 small tensors (ckptd save vs torch.save + fsync).

Every push uses fresh random bytes unless it is meant to dedup. Nothing is
removed from the page cache between steps (reads in load / torch.load may
hit it, for both alike). GB/s is 10^9 bytes per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

MiB = 1 << 20
GiB = 1 << 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup_path(binary: Optional[str]) -> None:
    """Makes `import ckptd` work from a build tree next to the binary."""
    if binary:
        candidate = Path(binary).resolve().parent.parent / "python"
        if (candidate / "ckptd").is_dir() and str(candidate) not in sys.path:
            sys.path.insert(0, str(candidate))


def _state(seed: int, tensors: int, tensor_bytes: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.rand(tensor_bytes // 4, generator=g).view(-1, 4096) for i in range(tensors)}


def _nbytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


# ------------------------------------------------------------------ worker


def _worker(args: argparse.Namespace) -> int:
    """One rank of (b): builds its shard, says "ready", waits for "go" on stdin,
    saves, prints {"start": t, "end": t} (CLOCK_MONOTONIC, shared by processes)."""
    import ckptd

    state = _state(args.seed * 1000 + args.rank, args.tensors, args.tensor_bytes)
    client = ckptd.Client(args.address, timeout=600)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start = time.monotonic()
    info = client.save(args.run, state, step=1, rank=args.rank, world_size=args.world_size)
    end = time.monotonic()
    print(json.dumps({"start": start, "end": end, "version": info.version, "state": info.state,
                      "uploaded_bytes": info.uploaded_bytes}), flush=True)
    return 0


# ------------------------------------------------------------------ server


class Server:
    """A ckptd on a free loopback port; `flags` are added to its command line
    and `ready` (if given) must also hold before it counts as started."""

    def __init__(
        self,
        binary: str,
        data_dir: Path,
        flags: Tuple[str, ...] = (),
        log_path: Optional[Path] = None,
        ready: Optional[Callable[[], bool]] = None,
    ) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = open(log_path or data_dir.parent / "ckptd.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--listen={self.address}", f"--data_dir={data_dir}", "--log_level=warn", "--shutdown_grace=2s",
             *flags],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"ckptd exited with {self.proc.returncode}; see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if ready is None or ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("ckptd did not start within 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------ measurements


def _timed(fn: Callable[[], object]) -> Tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _median(values: List[float]) -> float:
    return statistics.median(values)


def _multi_rank_push(args, address: str, run: str, world: int, shard_bytes: int, seed: int) -> Tuple[float, List[dict]]:
    tensors = max(1, shard_bytes // args.tensor_bytes)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--address={address}", f"--run={run}",
           f"--world-size={world}", f"--tensors={tensors}", f"--tensor-bytes={args.tensor_bytes}", f"--seed={seed}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen(cmd + [f"--rank={r}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for r in range(world)]
    try:
        for p in procs:
            line = p.stdout.readline().strip()
            if line != "ready":
                raise SystemExit(f"rank worker failed to start: {line!r}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=900)
            if p.returncode != 0:
                raise SystemExit(f"rank worker exited with {p.returncode}: {out}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return wall, results


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_save(state, path: Path) -> None:
    import torch

    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckptd", default=os.environ.get("CKPTD_BINARY"), help="ckptd binary (default $CKPTD_BINARY)")
    parser.add_argument("ckptd_positional", nargs="?", help="ckptd binary (alternative to --ckptd)")
    parser.add_argument("--dir", help="work directory for the server data and baseline files (default: new temp dir)")
    parser.add_argument("--tensors", type=int, default=16, help="tensors in the state (default 16)")
    parser.add_argument("--tensor-bytes", type=int, default=64 * MiB, help="bytes per tensor (default 64 MiB)")
    parser.add_argument("--ranks", type=int, default=4, help="ranks for (b) (default 4)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions of each timing; the median is shown")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)

    binary = args.ckptd or args.ckptd_positional
    if not binary or not os.access(binary, os.X_OK):
        parser.error("give the ckptd binary with --ckptd PATH (or $CKPTD_BINARY)")
    _setup_path(binary)
    import torch

    import ckptd

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(args.dir or tempfile.mkdtemp(prefix="ckptd-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "ckptd-data"
    server = Server(binary, data_dir)
    rows: List[Tuple[str, str]] = []
    total = args.tensors * args.tensor_bytes

    def row(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"  {name:<52} {value}", flush=True)

    print(f"python_bench: ckptd {binary}, ckptd {ckptd.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, work dir {work}")
    print(f"state: {args.tensors} x {args.tensor_bytes / MiB:.0f} MiB float32 = {total / MiB:.0f} MiB; "
          f"repeat {args.repeat} (median)\n")
    try:
        client = ckptd.Client(server.address, timeout=600)
        state = _state(1, args.tensors, args.tensor_bytes)

        # (a) first push vs unchanged re-push. Each repetition uses fresh bytes
        # for the first push (its own run; dedup is global, so perturb).
        print("(a) first push vs unchanged push")
        firsts, seconds_, infos = [], [], []
        for rep in range(args.repeat):
            if rep:
                for t in state.values():
                    t.add_(1.0)
            t1, i1 = _timed(lambda: client.save("bench-a", state, step=2 * rep))
            t2, i2 = _timed(lambda: client.save("bench-a", state, step=2 * rep + 1))
            firsts.append(t1)
            seconds_.append(t2)
            infos.append((i1, i2))
        first_s, second_s = _median(firsts), _median(seconds_)
        i1, i2 = infos[-1]
        row("first push: time", f"{first_s:8.3f} s  ({_gbps(total, first_s):.2f} GB/s, uploaded {i1.uploaded_bytes / MiB:.0f} MiB)")
        row("unchanged push: time", f"{second_s:8.3f} s  (uploaded {i2.uploaded_bytes} B)")
        row("first / unchanged (target >= 20x)", f"{first_s / second_s:8.1f} x")
        first_version = i1.version

        # (c) baselines on the same state and disk.
        print("\n(c) baselines (same state, same directory)")
        dd_times = []
        for _ in range(args.repeat):
            dd_file = work / "dd.bin"
            t, proc = _timed(lambda: subprocess.run(
                ["dd", "if=/dev/zero", f"of={dd_file}", "bs=4M", "count=256", "conv=fdatasync"],
                capture_output=True, text=True))
            if proc.returncode != 0:
                raise SystemExit(f"dd failed: {proc.stderr}")
            dd_times.append(t)
            dd_file.unlink()
        dd_s = _median(dd_times)
        dd_bytes = 256 * 4 * MiB
        row("dd bs=4M count=256 conv=fdatasync", f"{dd_s:8.3f} s  ({_gbps(dd_bytes, dd_s):.2f} GB/s)")

        ts_path = work / "state.pt"
        ts_times = []
        for _ in range(args.repeat):
            t, _ = _timed(lambda: _torch_save(state, ts_path))
            ts_times.append(t)
        ts_s = _median(ts_times)
        row("torch.save + fsync", f"{ts_s:8.3f} s  ({_gbps(total, ts_s):.2f} GB/s)")
        row("ckptd save / torch.save time (lower is better)", f"{first_s / ts_s:8.2f}")
        row("ckptd save GB/s / dd GB/s (target >= 0.9)", f"{_gbps(total, first_s) / _gbps(dd_bytes, dd_s):8.2f}")

        tl_times, cl_times = [], []
        for _ in range(args.repeat):
            t, loaded = _timed(lambda: torch.load(ts_path))
            tl_times.append(t)
            del loaded
            t, loaded = _timed(lambda: client.load("bench-a", first_version))
            cl_times.append(t)
            bad = [k for k in state if not torch.equal(loaded[k], state[k])]
            if bad:
                raise SystemExit(f"ckptd load returned different bytes for {bad}")
            del loaded
        tl_s, cl_s = _median(tl_times), _median(cl_times)
        ts_path.unlink()
        row("torch.load", f"{tl_s:8.3f} s  ({_gbps(total, tl_s):.2f} GB/s)")
        row("ckptd load", f"{cl_s:8.3f} s  ({_gbps(total, cl_s):.2f} GB/s)")
        row("ckptd load / torch.load time (target <= 0.5)", f"{cl_s / tl_s:8.2f}")

        clone_times, block_times, bg_times = [], [], []
        for rep in range(args.repeat):
            t, copy = _timed(lambda: {k: v.clone() for k, v in state.items()})
            clone_times.append(t)
            del copy
            for v in state.values():
                v.add_(1.0)  # fresh bytes, so the background upload is a real one
            start = time.perf_counter()
            handle = client.save_async("bench-async", state, step=rep)
            block_times.append(time.perf_counter() - start)
            handle.result()
            bg_times.append(time.perf_counter() - start)
        clone_s, block_s, bg_s = _median(clone_times), _median(block_times), _median(bg_times)
        row("one clone of the state (torch)", f"{clone_s:8.3f} s")
        row("save_async: blocking", f"{block_s:8.3f} s  (until result(): {bg_s:.3f} s)")
        row("save_async blocking / clone (target ~1)", f"{block_s / clone_s:8.2f}")

        small = {f"t{i}": torch.rand(256) for i in range(10000)}
        small_bytes = sum(t.numel() * t.element_size() for t in small.values())
        sp = work / "small.pt"
        s_ts, s_ck = [], []
        for rep in range(args.repeat):
            t, _ = _timed(lambda: _torch_save(small, sp))
            s_ts.append(t)
            for v in small.values():
                v.add_(1.0)
            t, _ = _timed(lambda: client.save("bench-small", small, step=rep))
            s_ck.append(t)
        sp.unlink()
        row(f"10,000 small tensors ({small_bytes / MiB:.1f} MiB): torch.save + fsync", f"{_median(s_ts):8.3f} s")
        row("10,000 small tensors: ckptd save", f"{_median(s_ck):8.3f} s")
        row("small: ckptd save / torch.save (target <= 1)", f"{_median(s_ck) / _median(s_ts):8.2f}")
        small = None

        # (b) 4 ranks x 256 MiB vs 1 rank x 1 GiB (fresh bytes each).
        print(f"\n(b) {args.ranks}-rank push vs 1-rank push")
        state = None  # free 1 GiB before (b)
        one_times, multi_times = [], []
        for rep in range(args.repeat):
            one_state = _state(100 + rep, args.tensors, args.tensor_bytes)
            t, info = _timed(lambda: client.save("bench-b1", one_state, step=rep))
            one_times.append(t)
            one_state = None
            wall, results = _multi_rank_push(args, server.address, f"bench-b{args.ranks}-{rep}", args.ranks,
                                             total // args.ranks, seed=1000 + rep)
            states = sorted(r["state"] for r in results)
            if states.count("COMMITTED") != 1 or len({r["version"] for r in results}) != 1:
                raise SystemExit(f"multi-rank push did not produce one committed version: {results}")
            uploaded = max(r["uploaded_bytes"] for r in results)
            if uploaded < 0.99 * total or info.uploaded_bytes < 0.99 * total:
                raise SystemExit(f"(b) measured dedup, not uploads: {info.uploaded_bytes} / {uploaded} of {total} B")
            multi_times.append(wall)
        one_s, multi_s = _median(one_times), _median(multi_times)
        row("1 rank x 1 GiB", f"{one_s:8.3f} s  ({_gbps(total, one_s):.2f} GB/s)")
        row(f"{args.ranks} ranks x {total // args.ranks / MiB:.0f} MiB (one version)",
            f"{multi_s:8.3f} s  ({_gbps(total, multi_s):.2f} GB/s)")
        row(f"{args.ranks}-rank GB/s / 1-rank GB/s", f"{one_s / multi_s:8.2f}")
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print("\nsummary")
    for name, value in rows:
        print(f"  {name:<52} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
