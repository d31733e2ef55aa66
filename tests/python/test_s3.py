"""ckptd with its blobs in S3 (a real radosgw), end to end from Python.

Runs as the ctest entry python_s3_tests, whose fixture starts the throwaway
Ceph cluster of tests/s3/ceph-cluster and points CKPTD_S3_ENV at its s3.env.
In the main Python suite (no cluster) every test here skips.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from _util import assert_same
from conftest import ServerProcess, ckptd_binary


def s3_env() -> Dict[str, str]:
    path = os.environ.get("CKPTD_S3_ENV", "")
    if not path or not Path(path).exists():
        pytest.skip("no S3 endpoint: runs as the ctest entry python_s3_tests (its fixture starts Ceph)")
    env = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"export (\w+)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def s3_request(env: Dict[str, str], query: str) -> str:
    """A signed GET of the bucket (listings), with curl's SigV4."""
    out = subprocess.run(
        [
            "curl", "-sS", "--fail",
            "--aws-sigv4", f"aws:amz:{env['CKPTD_S3_REGION']}:s3",
            "--user", f"{env['AWS_ACCESS_KEY_ID']}:{env['AWS_SECRET_ACCESS_KEY']}",
            "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            f"{env['CKPTD_S3_ENDPOINT']}/{env['CKPTD_S3_BUCKET']}?{query}",
        ],
        capture_output=True, text=True, check=True,
    )
    return out.stdout


def blob_keys(env: Dict[str, str], prefix: str) -> List[str]:
    xml = s3_request(env, f"list-type=2&prefix={prefix}%2Fblobs%2F")
    return re.findall(r"<Key>([^<]+)</Key>", xml)


def open_uploads(env: Dict[str, str], prefix: str) -> List[str]:
    xml = s3_request(env, f"prefix={prefix}%2F&uploads=")
    return re.findall(r"<UploadId>([^<]+)</UploadId>", xml)


def s3_flags(env: Dict[str, str], prefix: str) -> List[str]:
    return [
        f"--blob_store=s3://{env['CKPTD_S3_BUCKET']}/{prefix}",
        f"--s3_endpoint={env['CKPTD_S3_ENDPOINT']}",
        f"--s3_region={env['CKPTD_S3_REGION']}",
        # Small parts, so that the tensors below go up as multipart uploads.
        "--s3_part_size=262144",
        "--shutdown_grace=1s",
    ]


@pytest.fixture
def env(monkeypatch) -> Dict[str, str]:
    e = s3_env()
    # ckptd takes its keys from the environment it inherits.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", e["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", e["AWS_SECRET_ACCESS_KEY"])
    return e


def state(seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(512, 1024, generator=g),  # 2 MiB: 8 parts
        "layer.bias": torch.randn(1024, generator=g),
        "embed": torch.randn(300, 77, generator=g).to(torch.bfloat16),
        "steps": torch.arange(1000, dtype=torch.int64),
        "mask": torch.rand(4096, generator=g) > 0.5,
    }


def test_save_load_and_restart_keep_bytes_in_the_bucket(env, tmp_path):
    import ckptd

    prefix = f"py-{uuid.uuid4().hex[:12]}"
    server = ServerProcess(ckptd_binary(), tmp_path / "data", s3_flags(env, prefix))
    server.start()
    try:
        c = ckptd.Client(server.address, timeout=60)
        sd = state(1)
        c.save("s3run", sd, step=1, metrics={"loss": 0.5})
        c.save("s3run", state(2), step=2, metrics={"loss": 0.25})
        assert_same(c.load("s3run", "1"), sd)
        c.close()
        # The blobs are objects in the bucket, not files in the data dir.
        keys = blob_keys(env, prefix)
        # Per version: the large weight as its own blob, the rest packed.
        assert len(keys) == 4, keys
        blob_files = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and "blobs" in p.parts]
        assert blob_files == []
        assert open_uploads(env, prefix) == []
        assert server.stop() == 0

        # A restart over the same data dir serves the same bytes.
        server.start()
        c = ckptd.Client(server.address, timeout=60)
        assert_same(c.load("s3run", "1"), sd)
        assert_same(c.load("s3run", "last"), state(2))
        assert [v.step for v in c.versions("s3run")] == [1, 2]
        c.close()
    finally:
        server.stop()


def test_kill_9_during_a_save_leaves_no_upload_and_no_partial_version(env, tmp_path):
    import ckptd

    prefix = f"py-{uuid.uuid4().hex[:12]}"
    server = ServerProcess(ckptd_binary(), tmp_path / "data", s3_flags(env, prefix))
    server.start()
    big = {f"t{i}": torch.randn(1024, 1024) for i in range(48)}  # 192 MiB
    errors: List[BaseException] = []

    def push():
        try:
            c = ckptd.Client(server.address, timeout=30)
            c.save("killed", big, step=1)
        except BaseException as e:  # the server dies under it
            errors.append(e)

    t = threading.Thread(target=push)
    t.start()
    # Kill once parts are on their way.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not open_uploads(env, prefix):
        time.sleep(0.05)
    assert open_uploads(env, prefix), "no multipart upload started within 60 s"
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    t.join(120)
    assert not t.is_alive()

    server.start()
    try:
        # Orphaned uploads were aborted at start; nothing partial is visible.
        assert open_uploads(env, prefix) == []
        c = ckptd.Client(server.address, timeout=60)
        try:
            committed = c.versions("killed")
        except ckptd.NotFoundError:
            committed = []
        assert committed == []
        sd = state(3)
        c.save("killed", sd, step=2)
        assert_same(c.load("killed", "last"), sd)
        c.close()
    finally:
        server.stop()


def run_ckptd(args: List[str], env_vars: Dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ckptd_binary(), f"--data_dir={tmp_path / 'bad'}", "--listen=127.0.0.1:0", *args],
        capture_output=True, text=True, timeout=60, env=env_vars,
    )


def test_bad_s3_configuration_is_refused_naming_the_fix(env, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    keys = {**base, "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]}
    store = f"--blob_store=s3://{env['CKPTD_S3_BUCKET']}/bad"
    endpoint = f"--s3_endpoint={env['CKPTD_S3_ENDPOINT']}"
    cases = [
        ([store], keys, 2, "needs --s3_endpoint"),
        (["--blob_store=s3://Bad_Bucket", endpoint], keys, 2, "bucket name"),
        (["--blob_store=s3://bucket/../x", endpoint], keys, 2, "prefix segment"),
        (["--blob_store=gs://bucket", endpoint], keys, 2, "neither `file` nor s3://"),
        ([endpoint], keys, 2, "give --blob_store s3://"),
        ([store, "--s3_endpoint=127.0.0.1:7480"], keys, 2, "http://HOST"),
        ([store, endpoint], base, 2, "AWS_ACCESS_KEY_ID"),
        ([store, endpoint, "--s3_part_size=1000"], keys, 2, "--s3_part_size=1000"),
        ([store, endpoint, "--s3_region=us east"], keys, 2, "--s3_region"),
        ([store, endpoint], {**keys, "AWS_SECRET_ACCESS_KEY": "wrong"}, 1, "AWS_SECRET_ACCESS_KEY"),
        ([f"--blob_store=s3://no-such-bucket-{uuid.uuid4().hex[:8]}", endpoint], keys, 1, "the bucket does not exist; create it"),
    ]
    for args, env_vars, code, says in cases:
        r = run_ckptd(args, env_vars, tmp_path)
        assert r.returncode == code, (args, r.returncode, r.stderr[-2000:])
        assert says in r.stderr, (args, r.stderr[-2000:])

    # A credentials file: refused while others can read it, used once 0600.
    creds = tmp_path / "credentials"
    creds.write_text(
        "# ckptd's keys\n[other]\naws_access_key_id = nope\n"
        f"[default]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    creds.chmod(0o644)
    r = run_ckptd([store, endpoint, f"--s3_credentials_file={creds}"], base, tmp_path)
    assert r.returncode == 2 and "chmod 600" in r.stderr, r.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.write_text("[default]\n")
    empty.chmod(0o600)
    r = run_ckptd([store, endpoint, f"--s3_credentials_file={empty}"], base, tmp_path)
    assert r.returncode == 2 and "no aws_access_key_id" in r.stderr, r.stderr[-2000:]
    creds.chmod(0o600)
    server = ServerProcess(
        ckptd_binary(), tmp_path / "data",
        s3_flags(env, f"py-{uuid.uuid4().hex[:12]}") + [f"--s3_credentials_file={creds}"],
    )
    os.environ.pop("AWS_ACCESS_KEY_ID", None)
    os.environ.pop("AWS_SECRET_ACCESS_KEY", None)
    server.start()
    try:
        import ckptd

        c = ckptd.Client(server.address, timeout=60)
        sd = {"x": torch.arange(100000, dtype=torch.float32)}
        c.save("creds", sd, step=1)
        assert_same(c.load("creds"), sd)
        c.close()
    finally:
        server.stop()


def record_keys(env: Dict[str, str], prefix: str) -> List[str]:
    xml = s3_request(env, f"list-type=2&prefix={prefix}%2Frecord%2F")
    return re.findall(r"<Key>([^<]+)</Key>", xml)


def history(c, run: str):
    """What a rebuild must bring back: versions, aliases, policy, alias history."""
    versions = [
        (v.version, v.step, v.state, dict(v.metrics), dict(v.labels), sorted(v.aliases), v.pinned, v.total_bytes)
        for v in c.versions(run)
    ]
    policy = c.get_policy(run)
    events = [(e.alias, e.from_version, e.to_version, e.at) for e in c.alias_history(run)]
    return versions, (policy.monitor, policy.mode, policy.keep_last, policy.keep_best), events


def test_a_node_whose_data_dir_is_lost_is_rebuilt_from_the_bucket(env, tmp_path):
    import ckptd

    prefix = f"py-{uuid.uuid4().hex[:12]}"
    flags = s3_flags(env, prefix)
    server = ServerProcess(ckptd_binary(), tmp_path / "data", flags)
    server.start()
    states = {}
    try:
        c = ckptd.Client(server.address, timeout=60)
        c.set_policy("rb", monitor="loss", mode="min", keep_last=3)
        for step, loss in [(1, 0.9), (2, 0.3), (3, 0.5), (4, 0.7), (5, 0.6)]:
            states[step] = state(step)
            c.save("rb", states[step], step=step, metrics={"loss": loss}, labels={"k": f"v{step}"})
        c.pin("rb", 3)
        c.set_alias("rb", "prod", 3)
        c.save("other", state(9), step=1)
        c.save("other", state(10), step=2)
        c.delete_version("other", 1)
        before = history(c, "rb"), history(c, "other")
        c.close()
    finally:
        assert server.stop() == 0
    assert record_keys(env, prefix), "no record objects in the bucket"

    # The data dir is lost; --rebuild_index brings every version back.
    import shutil

    shutil.rmtree(tmp_path / "data")
    rebuilt = ServerProcess(ckptd_binary(), tmp_path / "data", flags + ["--rebuild_index"])
    rebuilt.start()
    try:
        assert "rebuilt the index from" in rebuilt.log()
        c = ckptd.Client(rebuilt.address, timeout=60)
        assert (history(c, "rb"), history(c, "other")) == before
        assert c.get("rb", "best").version == 2
        assert c.get("rb", "prod").version == 3
        for v in c.versions("rb"):
            assert_same(c.load("rb", v.version), states[v.step])
        assert_same(c.load("other", "last"), state(10))
        # It takes new versions, recorded after the rebuilt ones.
        c.save("rb", state(6), step=6, metrics={"loss": 0.1})
        assert c.get("rb", "best").step == 6
        c.close()
    finally:
        assert rebuilt.stop() == 0

    # An empty data dir over a bucket with a record is rebuilt without the
    # flag; a data dir that has an index is refused by --rebuild_index.
    auto = ServerProcess(ckptd_binary(), tmp_path / "data2", flags)
    auto.start()
    try:
        assert "rebuilding the index from the bucket" in auto.log()
        c = ckptd.Client(auto.address, timeout=60)
        assert c.get("rb", "best").step == 6
        assert_same(c.load("rb", "best"), state(6))
        # This node writes on: the rebuilt node's data dir is behind now.
        c.save("rb", state(7), step=7, metrics={"loss": 0.05})
        c.close()
    finally:
        assert auto.stop() == 0

    def run_over(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [ckptd_binary(), f"--data_dir={data_dir}", "--listen=127.0.0.1:0", *args],
            capture_output=True, text=True, timeout=60,
        )

    r = run_over(tmp_path / "data", *flags)
    assert r.returncode == 1 and "another ckptd writes to this bucket prefix" in r.stderr, r.stderr[-2000:]
    assert "--rebuild_index" in r.stderr
    r = run_over(tmp_path / "data2", *flags, "--rebuild_index")
    assert r.returncode == 1 and "already holds an index" in r.stderr, r.stderr[-2000:]
    r = run_over(tmp_path / "data3", "--rebuild_index")
    assert r.returncode == 2 and "give --blob_store s3://" in r.stderr, r.stderr[-2000:]


def replica_flags(env: Dict[str, str], prefix: str, *extra: str) -> List[str]:
    return [
        f"--replica_of=s3://{env['CKPTD_S3_BUCKET']}/{prefix}",
        f"--s3_endpoint={env['CKPTD_S3_ENDPOINT']}",
        f"--s3_region={env['CKPTD_S3_REGION']}",
        "--follow_interval=200ms",
        "--shutdown_grace=1s",
        *extra,
    ]


def wait_for(what: str, fn, timeout: float = 20.0):
    """fn() until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def test_read_replicas_follow_the_writer_and_refuse_changes(env, tmp_path):
    import ckptd

    prefix = f"py-{uuid.uuid4().hex[:12]}"
    writer = ServerProcess(ckptd_binary(), tmp_path / "writer", s3_flags(env, prefix))
    writer.start()
    replicas = []
    clients = []
    try:
        w = ckptd.Client(writer.address, timeout=60)
        w.set_policy("rep", monitor="loss", mode="min", keep_last=2)
        w.save("rep", state(1), step=1, metrics={"loss": 0.5})
        # Two replicas at once, started after the first version.
        # r2 keeps a local read cache of the blobs it serves.
        r2_flags = [
            f"--cache_dir={tmp_path / 'cache2'}",
            "--cache_bytes=1073741824",
            "--metrics_listen=127.0.0.1:0",
            f"--metrics_port_file={tmp_path / 'r2.metrics'}",
        ]
        for name, extra in (("r1", []), ("r2", r2_flags)):
            r = ServerProcess(ckptd_binary(), tmp_path / name, replica_flags(env, prefix, *extra))
            r.start()
            replicas.append(r)
        clients = [ckptd.Client(r.address, timeout=60) for r in replicas]
        for c in clients:
            assert_same(c.load("rep", "last"), state(1))
            assert c.get("rep", "best").step == 1
        # A replica's watcher sees the writer's next moves of `best`.
        watch = clients[0].watch("rep", "best", timeout=30)
        assert next(watch).step == 1
        w.save("rep", state(2), step=2, metrics={"loss": 0.2})
        w.save("rep", state(3), step=3, metrics={"loss": 0.9})
        moved = next(watch)
        assert (moved.step, moved.version) == (2, 2)
        watch.close()
        for c in clients:
            wait_for("a replica serves version 3", lambda c=c: [v.step for v in c.versions("rep")] == [2, 3])
            assert_same(c.load("rep", "best"), state(2))
            assert_same(c.load("rep", "last"), state(3))
            assert c.get_policy("rep").keep_last == 2
        cached = [p for p in (tmp_path / "cache2").rglob("*") if p.is_file() and "blobs" in p.parts]
        assert cached, "r2 cached no blob"
        assert_same(clients[1].load("rep", "best"), state(2))  # from its cache
        port = int((tmp_path / "r2.metrics").read_text().split()[0])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        metric = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(ckptd_\w+) (\S+)$", text, re.M)}
        assert metric["ckptd_read_cache_hits_total"] >= 1, text
        assert metric["ckptd_read_cache_bytes"] > 0
        assert metric["ckptd_record_seq"] > 0
        assert metric["ckptd_replica_last_follow_timestamp_seconds"] > time.time() - 60
        # Retention on the writer dropped version 1 (keep_last=2, best=2);
        # the replicas' history shows it as the writer's does.
        assert [e.to_version for e in clients[1].alias_history("rep", "last")] == [
            e.to_version for e in w.alias_history("rep", "last")
        ]
        # Export (ckpt pull) from a replica.
        build = os.environ.get("CKPTD_BUILD_DIR", "")
        ckpt = os.path.join(build, "client", "cli", "ckpt")
        if build and os.access(ckpt, os.X_OK):
            out = tmp_path / "best.safetensors"
            r = subprocess.run(
                [ckpt, "--server", replicas[1].address, "pull", "rep@best", "-o", str(out)],
                capture_output=True, text=True, timeout=120,
            )
            assert r.returncode == 0, r.stderr
            assert out.stat().st_size > state(2)["layer.weight"].numel() * 4

        # Every change is refused, naming the writer.
        c = clients[0]
        for change in (
            lambda: c.save("rep", state(4), step=4),
            lambda: c.set_alias("rep", "prod", 2),
            lambda: c.delete_version("rep", 2, force=True),
            lambda: c.pin("rep", 2),
            lambda: c.set_policy("rep", keep_last=5),
        ):
            with pytest.raises(ckptd.errors.FailedPreconditionError) as e:
                change()
            assert f"read replica of s3://{env['CKPTD_S3_BUCKET']}/{prefix}" in str(e.value)
            assert f"at 127.0.0.1:{writer.port}" in str(e.value), str(e.value)
        assert [v.step for v in c.versions("rep")] == [2, 3]
        # Nothing a replica did wrote to the bucket: the writer's record
        # is all there is, and a delete on the writer reaches the replicas.
        w.set_alias("rep", "prod", 3)
        w.delete_version("rep", 2, force=True)
        for c in clients:
            wait_for("a replica sees the delete", lambda c=c: [v.step for v in c.versions("rep")] == [3])
            assert c.get("rep", "prod").version == 3
            with pytest.raises(ckptd.errors.NotFoundError):
                c.load("rep", 2)

        # A restarted replica catches up from its own data dir.
        assert replicas[0].stop() == 0
        w.save("rep", state(5), step=5, metrics={"loss": 0.1})
        replicas[0].start()
        clients[0] = ckptd.Client(replicas[0].address, timeout=60)
        assert clients[0].get("rep", "best").step == 5
        assert_same(clients[0].load("rep", "best"), state(5))
        for c in clients:
            c.close()
        w.close()
    finally:
        for r in replicas:
            r.stop()
        assert writer.stop() == 0

    # Refusals at start, naming the fix.
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [ckptd_binary(), "--listen=127.0.0.1:0", *args], capture_output=True, text=True, timeout=60
        )

    r = run(f"--data_dir={tmp_path / 'writer'}", *replica_flags(env, prefix))
    assert r.returncode != 0 and "holds the index of a writing ckptd" in r.stderr, r.stderr[-2000:]
    r = run(f"--data_dir={tmp_path / 'r1'}", *replica_flags(env, prefix + "-other"))
    assert r.returncode != 0 and f"is a replica of s3://{env['CKPTD_S3_BUCKET']}/{prefix}" in r.stderr, r.stderr[-2000:]
    r = run(f"--data_dir={tmp_path / 'r9'}", *replica_flags(env, prefix), *s3_flags(env, prefix)[:1])
    assert r.returncode != 0 and "exclude each other" in r.stderr, r.stderr[-2000:]
    r = run(f"--data_dir={tmp_path / 'r9'}", *replica_flags(env, prefix, "--follow_interval=1ms"))
    assert r.returncode != 0 and "--follow_interval=1ms is outside" in r.stderr, r.stderr[-2000:]
    r = run(f"--data_dir={tmp_path / 'r9'}", "--follow_interval=1s")
    assert r.returncode == 2 and "give --replica_of" in r.stderr, r.stderr[-2000:]
    r = run(f"--data_dir={tmp_path / 'r9'}", *replica_flags(env, prefix, "--rebuild_index"))
    assert r.returncode != 0 and "drop --rebuild_index" in r.stderr, r.stderr[-2000:]
    r = run(f"--data_dir={tmp_path / 'r9'}", f"--cache_dir={tmp_path / 'c9'}")
    assert r.returncode == 2 and "--cache_dir is for an S3 blob store" in r.stderr, r.stderr[-2000:]
    r = run(f"--data_dir={tmp_path / 'r9'}", *replica_flags(env, prefix), "--cache_bytes=1000")
    assert r.returncode == 2 and "give --cache_dir DIR too" in r.stderr, r.stderr[-2000:]
    r = run(f"--data_dir={tmp_path / 'r9'}", *replica_flags(env, prefix), f"--cache_dir={tmp_path / 'c9'}")
    assert r.returncode != 0 and "needs --cache_bytes" in r.stderr, r.stderr[-2000:]


def test_colocated_saves_go_to_the_bucket_and_loads_read_over_grpc(env, tmp_path):
    """The data plane over an S3 store: a staged save_async lands in the
    bucket; a load cannot map bucket objects, so it reads them over gRPC."""
    import shutil
    import tempfile

    import ckptd

    prefix = f"py-{uuid.uuid4().hex[:12]}"
    sock_dir = Path(tempfile.mkdtemp(prefix="ckptd-s3", dir="/tmp"))
    sock = sock_dir / "c.sock"
    server = ServerProcess(ckptd_binary(), tmp_path / "data", s3_flags(env, prefix) + [f"--local_socket={sock}"])
    server.start()
    try:
        with ckptd.Client(f"unix:{sock}", timeout=60) as c:
            sd = state(7)
            info = c.save_async("s3colo", sd, step=1).result()
            assert info.state == "COMMITTED"
            assert len(blob_keys(env, prefix)) == 2, blob_keys(env, prefix)
            assert_same(c.load("s3colo"), sd)
        assert "co-located save of s3colo step 1" in server.log()
    finally:
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
