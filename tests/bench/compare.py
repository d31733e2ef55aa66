#!/usr/bin/python3
"""compare: every figure of the speed targets (README, Performance), each
beside its baseline measured in the same run on the same disk, printed as a
table of ratios.

    /usr/bin/python3 tests/bench/compare.py --ckptd build/server/ckptd
    /usr/bin/python3 tests/bench/compare.py --ckptd build/server/ckptd --quick

It starts its own ckptd (loopback TCP on a free port, plus --local_socket in
the work directory) and writes every baseline file (torch.save output, the
plain write) into the same directory as the server's data dir: same disk.
The peak-RSS row runs on a second, fresh ckptd so that its VmHWM (read from
/proc/PID/status) is that push's alone. Every push that should upload
writes fresh bytes (dedup is global). The disk of a shared VM is noisy: only
ratios measured in one run mean something; run it several times.

Sizes are flags; --quick shrinks all of them so that a run takes well under
a minute (for checking the script, not for figures).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_bench import MiB, Server, _fsync_dir, _gbps, _setup_path, _timed, _torch_save  # noqa: E402

# A trainer that saves with save_async over the daemon's socket and is
# killed (SIGKILL, by itself) as soon as save_async returns.
_TRAINER = r"""
import os, signal, sys
import torch, ckptd
address, count, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(4242)
state = {f"layers.{i}.weight": torch.rand(nbytes // 4, generator=g) for i in range(count)}
ckptd.Client(address, timeout=600).save_async("cmp-kill9", state, step=1)
print("returned", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _tensors(seed: int, count: int, nbytes: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.rand(nbytes // 4, generator=g) for i in range(count)}


def _perturb(state) -> None:
    """Fresh bytes in place (the server dedups globally)."""
    for t in state.values():
        t.add_(1.0)


def _nbytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _plain_write(state, path: Path) -> float:
    """Seconds to write the state's bytes to `path` and fdatasync them."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in state.values():
            view = memoryview(t.numpy()).cast("B")
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        os.fdatasync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return time.perf_counter() - start


def _kill9_row(daemon: "Daemon", count: int, nbytes: int) -> str:
    """What became of a co-located save_async whose trainer was killed."""
    import subprocess

    import torch

    import ckptd

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    trainer = subprocess.run([sys.executable, "-c", _TRAINER, daemon.unix_address, str(count), str(nbytes)],
                             capture_output=True, text=True, timeout=1200, env=env)
    killed = time.perf_counter()
    if trainer.returncode != -9 or trainer.stdout.strip() != "returned":
        return f"trainer did not get that far: {trainer.returncode} {trainer.stderr[-300:]!r}"
    with ckptd.Client(daemon.address, timeout=600) as client:
        while True:
            done = [v for v in client.versions("cmp-kill9") if v.state == "COMMITTED"]
            if done:
                break
            if time.perf_counter() - killed > 600:
                return "LOST: not committed 600 s after the kill"
            time.sleep(0.05)
        after = time.perf_counter() - killed
        loaded = client.load("cmp-kill9")
    g = torch.Generator().manual_seed(4242)
    for i in range(count):
        if not torch.equal(loaded[f"layers.{i}.weight"], torch.rand(nbytes // 4, generator=g)):
            return f"DIFFERENT bytes in layers.{i}.weight"
    return f"committed, bit-identical ({after:.2f} s after the kill)"


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


class Daemon(Server):
    """A ckptd on a free loopback port and a Unix socket."""

    def __init__(self, binary: str, work: Path, name: str) -> None:
        sock = work / f"{name}.sock"
        if len(str(sock)) > 107:  # sun_path
            sock = Path(tempfile.mkdtemp(prefix="ckptd-cmp-", dir="/tmp")) / "s.sock"
        self.socket = sock
        self.unix_address = f"unix:{sock}"
        super().__init__(binary, work / name, (f"--local_socket={sock}",), work / f"{name}.log", sock.exists)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Table:
    def __init__(self) -> None:
        self.rows: List[Tuple[str, str, str, str]] = []

    def add(self, figure: str, value: str, detail: str, goal: str) -> None:
        self.rows.append((figure, value, detail, goal))
        print(f"  {figure:<58} {value:>16}   {detail}   [goal {goal}]", flush=True)

    def print(self) -> None:
        w = [max(len(r[i]) for r in self.rows + [("figure", "ratio", "measured (same run)", "goal")]) for i in range(4)]
        line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
        print("\n" + line(("figure", "ratio", "measured (same run)", "goal")))
        print("| " + " | ".join("-" * x for x in w) + " |")
        for r in self.rows:
            print(line(r))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckptd", default=os.environ.get("CKPTD_BINARY"), help="ckptd binary (default $CKPTD_BINARY)")
    p.add_argument("--dir", help="work directory (default: a new directory under $TMPDIR)")
    p.add_argument("--quick", action="store_true", help="small sizes: checks the script in well under a minute")
    p.add_argument("--tensors", type=int, help="tensors in the main state (default 64; quick 8)")
    p.add_argument("--tensor-mib", type=int, help="MiB per tensor of the main state (default 16)")
    p.add_argument("--scale-mib", help="comma list of state sizes for the GB/s row (default 256,1024,4096; "
                   "quick 32,64,128); the main state's size is reused, the largest is the RSS push")
    p.add_argument("--small-count", type=int, help="small tensors (default 100000; quick 10000)")
    p.add_argument("--small-bytes", type=int, default=1024, help="bytes per small tensor (default 1024)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    if not args.ckptd or not os.access(args.ckptd, os.X_OK):
        p.error("give the ckptd binary with --ckptd PATH (or $CKPTD_BINARY)")
    tensors = args.tensors or (8 if args.quick else 64)
    tensor_bytes = (args.tensor_mib or 16) * MiB
    scale = [int(x) * MiB for x in (args.scale_mib or ("32,64,128" if args.quick else "256,1024,4096")).split(",")]
    small_count = args.small_count or (10000 if args.quick else 100000)

    _setup_path(args.ckptd)
    import torch

    import ckptd

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(args.dir or tempfile.mkdtemp(prefix="ckptd-cmp-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"compare: ckptd {ckptd.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"work dir {work} (same disk for every baseline)")
    table = Table()
    daemon = Daemon(args.ckptd, work, "data")
    gbps_by_size: Dict[int, float] = {}
    try:
        state = _tensors(1, tensors, tensor_bytes)
        total = _nbytes(state)
        print(f"main state: {tensors} x {tensor_bytes // MiB} MiB float32 = {total / MiB:.0f} MiB\n")
        pt = work / "state.pt"
        raw = work / "state.bin"

        for way, address in (("TCP", daemon.address), ("unix:", daemon.unix_address)):
            client = ckptd.Client(address, timeout=600)
            run = "cmp-tcp" if way == "TCP" else "cmp-unix"
            # Baselines first, then ckptd, on the same bytes and disk.
            _perturb(state)
            ts_s, _ = _timed(lambda: _torch_save(state, pt))
            write_s = _plain_write(state, raw)
            raw.unlink()
            save_s, info = _timed(lambda: client.save(run, state, step=1))
            if info.uploaded_bytes < 0.99 * total:
                raise SystemExit(f"save measured dedup: uploaded {info.uploaded_bytes} of {total}")
            re_s, info2 = _timed(lambda: client.save(run, state, step=2))
            if way == "TCP":
                gbps_by_size[total] = _gbps(total, save_s)
            table.add(f"{way} save time / torch.save+fsync", f"{save_s / ts_s:.2f}x",
                      f"{save_s:.2f} s / {ts_s:.2f} s", "<= 1.0x")
            table.add(f"{way} save GB/s / plain write+fdatasync GB/s", f"{write_s / save_s:.2f}",
                      f"{_gbps(total, save_s):.2f} / {_gbps(total, write_s):.2f} GB/s", ">= 0.9")
            if way == "unix:":
                table.add("co-located save, call to committed / plain write+fdatasync", f"{save_s / write_s:.2f}x",
                          f"{save_s:.2f} s / {write_s:.2f} s", "<= 1.2x")

            tl_s, loaded = _timed(lambda: torch.load(pt, weights_only=True))
            del loaded
            cl_s, loaded = _timed(lambda: client.load(run, info.version))
            bad = [k for k in state if not torch.equal(loaded[k], state[k])]
            if bad:
                raise SystemExit(f"{way} load returned different bytes for {bad[:3]}")
            del loaded
            pt.unlink()
            if way == "unix:":
                table.add("co-located load (tensors usable, bytes verified) / torch.load", f"{cl_s / tl_s:.2f}x",
                          f"{cl_s:.2f} s / {tl_s:.2f} s", "<= 0.5x")
            else:
                table.add(f"{way} load time / torch.load(weights_only=True)", f"{cl_s / tl_s:.2f}x",
                          f"{cl_s:.2f} s / {tl_s:.2f} s", "<= 1.0x")
            table.add(f"{way} first push / unchanged re-push", f"{save_s / re_s:.1f}x",
                      f"{save_s:.2f} s / {re_s:.3f} s (re-push uploaded {info2.uploaded_bytes} B)", ">= 20x")

            clone_s, copy = _timed(lambda: {k: v.clone() for k, v in state.items()})
            del copy
            _perturb(state)
            start = time.perf_counter()
            handle = client.save_async(run, state, step=3)
            block_s = time.perf_counter() - start
            handle.result()
            done_s = time.perf_counter() - start
            label = "co-located save_async blocking (staged in daemon memory)" if way == "unix:" else "TCP save_async blocking"
            table.add(f"{label} / clone()", f"{block_s / clone_s:.2f}x",
                      f"{block_s:.2f} s / {clone_s:.2f} s (committed after {done_s:.2f} s)", "<= 1.5x")

            small = {f"t{i}": torch.rand(args.small_bytes // 4) for i in range(small_count)}
            sp = work / "small.pt"
            st_s, _ = _timed(lambda: _torch_save(small, sp))
            sp.unlink()
            sc_s, _ = _timed(lambda: client.save(run + "-small", small, step=1))
            table.add(f"{way} {small_count:,} tensors of {args.small_bytes} B: save / torch.save+fsync",
                      f"{sc_s / st_s:.2f}x", f"{sc_s:.2f} s / {st_s:.2f} s", "<= 1.0x")
            del small
            client.close()

        # Save GB/s by size, over TCP; the largest on a fresh ckptd, whose
        # peak RSS is then the one of receiving it.
        client = ckptd.Client(daemon.address, timeout=600)
        for size in scale[:-1]:
            if size in gbps_by_size:
                continue
            s = _tensors(10 + size // MiB, max(1, size // tensor_bytes), min(size, tensor_bytes))
            t, _ = _timed(lambda: client.save("cmp-scale", s, step=size // MiB))
            gbps_by_size[_nbytes(s)] = _gbps(_nbytes(s), t)
            del s
        client.close()
        state = None
        table.add("kill -9 of the trainer right after co-located save_async", _kill9_row(daemon, tensors, tensor_bytes),
                  f"{tensors} x {tensor_bytes // MiB} MiB", "committed, bit-identical")
    finally:
        daemon.stop()

    big = scale[-1]
    fresh = Daemon(args.ckptd, work, "rss")
    try:
        s = _tensors(99, max(1, big // tensor_bytes), min(big, tensor_bytes))
        client = ckptd.Client(fresh.address, timeout=1200)
        before_kib = _vm_hwm_kib(fresh.proc.pid)
        t, _ = _timed(lambda: client.save("cmp-rss", s, step=1))
        peak_kib = _vm_hwm_kib(fresh.proc.pid)
        gbps_by_size[_nbytes(s)] = _gbps(_nbytes(s), t)
        client.close()
        del s
    finally:
        fresh.stop()
    table.add(f"server peak RSS receiving a {big / MiB / 1024:g} GiB push / 256 MiB",
              f"{peak_kib / 1024 / 256:.2f}", f"VmHWM {peak_kib / 1024:.0f} MiB (at start {before_kib / 1024:.0f} MiB)",
              "<= 1.0")
    sizes = sorted(gbps_by_size)
    figures = ", ".join(f"{gbps_by_size[k]:.2f} @ {k / MiB:.0f} MiB" for k in sizes)
    spread = max(gbps_by_size.values()) / min(gbps_by_size.values())
    table.add("save GB/s by size: fastest / slowest", f"{spread:.2f}", figures, "<= 1.15")

    table.print()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
