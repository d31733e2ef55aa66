#!/usr/bin/python3
"""s3_bench: ckptd over a real radosgw (Ceph 16, tests/s3/ceph-cluster),
each figure beside its baseline measured in the same run.

    /usr/bin/python3 tests/bench/s3_bench.py --ckptd build/server/ckptd
    /usr/bin/python3 tests/bench/s3_bench.py --ckptd build/server/ckptd --quick

It starts a throwaway Ceph cluster (or uses the one in --s3-env), then:

  push      Client.save of a state (--tensors x --tensor-mib MiB, random
            float32) to a ckptd with --blob_store s3://; baseline: curl PUTs
            of the same bytes, one object per tensor, --curl-parallel at once
            (the store sends parts with 4 threads), files read from /dev/shm.
            "push again": a second save of changed bytes (every tensor + 1),
            the steady state of a training job's checkpoints.
  pull      Client.load of that version (bytes verified by the client);
            baseline: curl GETs of the baseline objects into /dev/null.
  rebuild   --versions small versions pushed, the data dir removed, and a
            ckptd started with --rebuild_index: seconds from start to
            serving (and the rebuild alone, from ckptd's log).
  replicas  1, 2 and 3 read replicas (--replica_of) of the prefix, one
            client process per replica pulling the version --pulls times at
            once; aggregate GB/s over the wall time. Also how long a
            replica takes to serve a version after the writer's save
            returned (follow lag, --follow-interval).

Everything (client, ckptd, radosgw, the memstore OSD) shares this
machine's cores, so the figures are bounded by the CPU, not a network; the
ratios are what to compare. GB/s = 10^9 bytes/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_bench import Server, _gbps, _setup_path, _state  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def _read_env(path: Path) -> Dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        m = re.match(r"export (\w+)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
    for key in ("CKPTD_S3_ENDPOINT", "CKPTD_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not env.get(key):
            raise SystemExit(f"{path}: no {key}")
    return env


def _curl(env: Dict[str, str], *args: str) -> None:
    subprocess.run(
        [
            "curl", "-sS", "--fail", "-o", "/dev/null",
            "--aws-sigv4", f"aws:amz:{env.get('CKPTD_S3_REGION', 'us-east-1')}:s3",
            "--user", f"{env['AWS_ACCESS_KEY_ID']}:{env['AWS_SECRET_ACCESS_KEY']}",
            "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            *args,
        ],
        check=True,
    )  # fmt: skip


def _url(env: Dict[str, str], key: str) -> str:
    return f"{env['CKPTD_S3_ENDPOINT']}/{env['CKPTD_S3_BUCKET']}/{key}"


def _parallel(n: int, jobs) -> float:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(j) for j in jobs]:
            f.result()
    return time.perf_counter() - start


def _s3_flags(env: Dict[str, str]) -> List[str]:
    return [f"--s3_endpoint={env['CKPTD_S3_ENDPOINT']}", f"--s3_region={env.get('CKPTD_S3_REGION', 'us-east-1')}"]


def _pull_loop(address: str, run: str, version: int, pulls: int, go, out) -> None:
    import ckptd

    c = ckptd.Client(address, timeout=600)
    c.get(run, version)  # connected before the start
    go.wait()
    n = 0
    for _ in range(pulls):
        state = c.load(run, version)
        n += sum(t.numel() * t.element_size() for t in state.values())
    c.close()
    out.put(n)


def _replica_fanout(env, args, work: Path, prefix: str, run: str, version: int, count: int) -> float:
    """Aggregate GB/s of `count` replicas, one puller process each."""
    replicas = [
        Server(
            args.ckptd,
            work / f"replica-{count}-{i}",
            (f"--replica_of=s3://{env['CKPTD_S3_BUCKET']}/{prefix}", *_s3_flags(env)),
            log_path=work / f"replica-{count}-{i}.log",
        )
        for i in range(count)
    ]
    try:
        ctx = multiprocessing.get_context("spawn")
        go = ctx.Event()
        out = ctx.Queue()
        procs = [
            ctx.Process(target=_pull_loop, args=(r.address, run, version, args.pulls, go, out)) for r in replicas
        ]
        for p in procs:
            p.start()
        time.sleep(2.0)  # every puller connected (spawn imports torch)
        start = time.perf_counter()
        go.set()
        total = sum(out.get(timeout=900) for _ in procs)
        wall = time.perf_counter() - start
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"a puller exited with {p.exitcode}")
        return _gbps(total, wall)
    finally:
        for r in replicas:
            r.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckptd", default=os.environ.get("CKPTD_BINARY", str(REPO / "build/server/ckptd")))
    parser.add_argument("--s3-env", help="an s3.env of a running cluster (default: start one); a run leaves about 1 GB in its bucket")
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--tensor-mib", type=int, default=16)
    parser.add_argument("--curl-parallel", type=int, default=4)
    parser.add_argument("--versions", type=int, default=1000, help="versions in the rebuilt index")
    parser.add_argument("--pulls", type=int, default=3, help="pulls per replica client")
    parser.add_argument("--follow-interval", default="2s", help="the replicas' --follow_interval, in seconds (e.g. 2s)")
    parser.add_argument("--dir", help="work directory (default: a new one under $TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script in well under a minute")
    args = parser.parse_args()
    if args.quick:
        args.tensors, args.tensor_mib, args.versions, args.pulls = 4, 4, 50, 1
    _setup_path(args.ckptd)
    import ckptd

    work = Path(args.dir or tempfile.mkdtemp(prefix="ckptd-s3-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = None
    if args.s3_env:
        env = _read_env(Path(args.s3_env))
    else:
        cluster = work / "ceph"
        subprocess.run([str(REPO / "tests/s3/ceph-cluster"), "start", str(cluster)], check=True, stdout=subprocess.DEVNULL)
        env = _read_env(cluster / "s3.env")
    os.environ["AWS_ACCESS_KEY_ID"] = env["AWS_ACCESS_KEY_ID"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = env["AWS_SECRET_ACCESS_KEY"]
    rows = []
    shm = Path(tempfile.mkdtemp(prefix="ckptd-s3-bench-", dir="/dev/shm"))
    try:
        prefix = f"bench-{uuid.uuid4().hex[:10]}"
        state = _state(1, args.tensors, args.tensor_mib * MiB)
        nbytes = sum(t.numel() * t.element_size() for t in state.values())

        # ---- baseline: curl PUT / GET of the same bytes
        files = []
        for i, t in enumerate(state.values()):
            f = shm / f"t{i}"
            f.write_bytes(t.numpy().tobytes())
            files.append(f)
        keys = [f"{prefix}-curl/t{i}" for i in range(len(files))]
        put_s = _parallel(args.curl_parallel, [lambda f=f, k=k: _curl(env, "-T", str(f), _url(env, k)) for f, k in zip(files, keys)])
        get_s = _parallel(args.curl_parallel, [lambda k=k: _curl(env, _url(env, k)) for k in keys])
        shutil.rmtree(shm)

        # ---- ckptd --blob_store s3://
        store = (f"--blob_store=s3://{env['CKPTD_S3_BUCKET']}/{prefix}", *_s3_flags(env))
        writer = Server(args.ckptd, work / "writer", store, log_path=work / "writer.log")
        c = ckptd.Client(writer.address, timeout=600)
        c.save("warm", {"x": state["layers.0.weight"][:16].clone()}, step=0)  # connections up
        start = time.perf_counter()
        c.save("bench", state, step=1)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        loaded = c.load("bench", "last")
        load_s = time.perf_counter() - start
        for k, t in state.items():
            if not loaded[k].equal(t):
                raise SystemExit(f"pulled {k} differs")
        del loaded
        # A second save of new bytes: what a training job's later
        # checkpoints see (ckptd's buffers are warm, nothing deduplicates).
        for t in state.values():
            t.add_(1.0)
        start = time.perf_counter()
        c.save("bench", state, step=2)
        again_s = time.perf_counter() - start
        rows.append(("push", f"{_gbps(nbytes, put_s):.2f} GB/s curl PUT x{args.curl_parallel}",
                     f"{_gbps(nbytes, save_s):.2f} GB/s Client.save", put_s / save_s))  # fmt: skip
        rows.append(("push again, new bytes", f"{_gbps(nbytes, put_s):.2f} GB/s curl PUT x{args.curl_parallel}",
                     f"{_gbps(nbytes, again_s):.2f} GB/s Client.save", put_s / again_s))  # fmt: skip
        rows.append(("pull", f"{_gbps(nbytes, get_s):.2f} GB/s curl GET x{args.curl_parallel}",
                     f"{_gbps(nbytes, load_s):.2f} GB/s Client.load", get_s / load_s))  # fmt: skip

        # ---- replicas: follow lag, then fan-out
        lags = []
        replica = Server(
            args.ckptd,
            work / "lag-replica",
            (f"--replica_of=s3://{env['CKPTD_S3_BUCKET']}/{prefix}", *_s3_flags(env),
             f"--follow_interval={args.follow_interval}"),
            log_path=work / "lag-replica.log",
        )  # fmt: skip
        rc = ckptd.Client(replica.address, timeout=60)
        small = {"w": state["layers.0.weight"][:4].clone()}
        interval = float(args.follow_interval.rstrip("s"))
        rng = random.Random(7)
        for step in range(2, 7):
            small["w"].add_(1.0)
            # At a random point of the replica's follow cycle.
            time.sleep(rng.uniform(0, interval))
            c.save("lag", small, step=step)
            start = time.perf_counter()
            while True:
                try:
                    if rc.get("lag", "last").step == step:
                        break
                except ckptd.errors.NotFoundError:
                    pass
                time.sleep(0.01)
            lags.append(time.perf_counter() - start)
        rc.close()
        replica.stop()
        rows.append(("replica follow lag", f"--follow_interval={args.follow_interval}",
                     f"{min(lags):.2f}-{max(lags):.2f} s (5 saves)", None))  # fmt: skip
        fanout = {}
        for count in (1, 2, 3):
            fanout[count] = _replica_fanout(env, args, work, prefix, "bench", 1, count)
        for count in (1, 2, 3):
            rows.append((f"{count} replica(s), {count} puller(s)", f"{fanout[1]:.2f} GB/s 1 replica",
                         f"{fanout[count]:.2f} GB/s aggregate", fanout[count] / fanout[1]))  # fmt: skip

        # ---- rebuild of an index of --versions versions
        tiny = {"w": state["layers.0.weight"][:1].clone()}
        start = time.perf_counter()
        for step in range(args.versions):
            tiny["w"].add_(1.0)
            c.save("many", tiny, step=step)
        push_many_s = time.perf_counter() - start
        c.close()
        writer.stop()
        versions = args.versions + 8  # and the 2 of `bench`, `warm` and the 5 of `lag`
        shutil.rmtree(work / "writer")
        start = time.perf_counter()
        rebuilt = Server(
            args.ckptd, work / "writer", (*store, "--rebuild_index", "--log_level=info"), log_path=work / "rebuild.log"
        )
        serve_s = time.perf_counter() - start
        c = ckptd.Client(rebuilt.address, timeout=60)
        got = len(c.versions("many"))
        c.close()
        rebuilt.stop()
        if got != args.versions:
            raise SystemExit(f"the rebuilt index holds {got} versions of `many`, not {args.versions}")
        m = re.search(r"rebuilt the index from \S+: (\d+) records in (\S+)", (work / "rebuild.log").read_text())
        detail = f"{m.group(1)} records applied in {m.group(2)}" if m else "no rebuild line in the log"
        rows.append(("rebuild", f"{versions} versions ({push_many_s:.1f} s to push {args.versions})",
                     f"{serve_s:.2f} s start to serving; {detail}", None))  # fmt: skip
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        if cluster is not None:
            subprocess.run([str(REPO / "tests/s3/ceph-cluster"), "stop", str(cluster)], check=False)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nckptd over radosgw (Ceph 16, memstore OSD, loopback); state {nbytes / 1e9:.2f} GB "
          f"({args.tensors} x {args.tensor_mib} MiB); {os.cpu_count()} cores shared by all\n")  # fmt: skip
    print(f"| figure | baseline | ckptd | ratio |\n| --- | --- | --- | --- |")
    for name, base, ours, ratio in rows:
        print(f"| {name} | {base} | {ours} | {'' if ratio is None else f'{ratio:.2f}x'} |")


if __name__ == "__main__":
    main()
