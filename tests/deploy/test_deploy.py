"""The deploy files, checked against the binaries they deploy.

What can be run here is run: each flag file configures a real ckptd (with
only its ports, paths and secrets swapped for the test's), `ckpt health`
answers through the ports they name, systemd-analyze verifies the unit and
rates its hardening, systemd-sysusers creates the unit's user in a scratch
root. What needs a Docker daemon or a cluster is checked statically: the
Dockerfile builds with the install script and preset CI tests, its runtime
stage installs every library the built binaries load, it runs as a numeric
non-root user with a volume and a HEALTHCHECK through `ckpt health`;
.dockerignore keeps build trees and .git out and every tracked file in; the
Kubernetes YAML parses and its probes, ports, volumes, limits and selectors
agree with each other, with the image and with the flags.

Needs $CKPTD_BINARY and $CKPT_BINARY (set by tests/deploy/CMakeLists.txt),
python3-yaml, openssl and systemd's tools (deploy/install-deps.sh).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CKPTD = os.environ.get("CKPTD_BINARY", str(ROOT / "build/server/ckptd"))
CKPT = os.environ.get("CKPT_BINARY", str(ROOT / "build/client/cli/ckpt"))

DOCKER_FLAGS = ROOT / "deploy/docker/ckptd.flags"
HOST_FLAGS = ROOT / "deploy/ckptd.flags"
UNIT = ROOT / "deploy/ckptd.service"
SYSUSERS = ROOT / "deploy/sysusers.d/ckptd.conf"
K8S = ROOT / "deploy/k8s/ckptd.yaml"

# Only a guard against a hang; nothing asserts how fast anything is.
GUARD_SECONDS = 60


# ---------------------------------------------------------------------------
# Flags


def ckptd_flags() -> set[str]:
    """The flag names `ckptd --help` documents."""
    out = subprocess.run([CKPTD, "--help"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"^  --([a-z0-9_]+)  \(default: ", out, re.M))
    assert {"listen", "data_dir", "auth_file", "health_listen"} <= names, out
    return names


def normalize(name: str) -> str:
    return name.replace("-", "_")


def flag_lines(text: str) -> list[tuple[str, str | None]]:
    """(name, value) of each flag line of a flag file, as ckptd reads it."""
    flags = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert line.startswith("-"), f"not a flag line: {line!r}"
        name, eq, value = line.lstrip("-").partition("=")
        flags.append((normalize(name), value if eq else None))
    return flags


def commented_flags(text: str) -> list[str]:
    """Names in commented-out flag lines ('#--name=value')."""
    return [normalize(m) for m in re.findall(r"^\s*#--([A-Za-z][A-Za-z0-9_-]*)", text, re.M)]


def flag_map(text: str) -> dict[str, str | None]:
    return dict(flag_lines(text))


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def k8s_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def k8s(kind: str) -> dict:
    found = [d for d in k8s_docs() if d["kind"] == kind]
    assert len(found) == 1, f"{K8S.name}: want one {kind}, have {len(found)}"
    return found[0]


def k8s_flags_text() -> str:
    data = k8s("ConfigMap")["data"]
    assert list(data) == ["ckptd.flags"], data
    return data["ckptd.flags"]


def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: section -> [(key, value)], repeated keys kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_value(sections, section: str, key: str) -> str:
    values = [v for k, v in sections.get(section, []) if k == key]
    assert values, f"{UNIT.name}: no {key}= in [{section}]"
    return values[-1]


def unit_exec_flags() -> dict[str, str | None]:
    exec_start = shlex.split(unit_value(unit_entries(UNIT.read_text()), "Service", "ExecStart"))
    return flag_map("\n".join(exec_start[1:]))


def test_every_flag_in_the_deploy_files_is_a_ckptd_flag():
    known = ckptd_flags() | {"flagfile"}
    sources = {
        "deploy/ckptd.flags": HOST_FLAGS.read_text(),
        "deploy/docker/ckptd.flags": DOCKER_FLAGS.read_text(),
        "k8s ConfigMap ckptd-flags": k8s_flags_text(),
        "Dockerfile ENTRYPOINT": "\n".join(dockerfile_final_json("ENTRYPOINT")[1:]),
        "k8s container args": "\n".join(k8s_container()["args"]),
        "systemd ExecStart": "\n".join(
            shlex.split(unit_value(unit_entries(UNIT.read_text()), "Service", "ExecStart"))[1:]
        ),
    }
    for where, text in sources.items():
        lines = flag_lines(text)
        assert lines, where
        for name, _ in lines:
            assert name in known, f"{where}: --{name} is not a ckptd flag (ckptd --help)"
        for name in commented_flags(text):
            assert name in known, f"{where}: commented --{name} is not a ckptd flag"


def test_the_host_flag_file_names_every_ckptd_flag():
    """deploy/ckptd.flags is where an operator looks a flag up: each one
    `ckptd --help` documents is there, set or commented out."""
    text = HOST_FLAGS.read_text()
    named = {name for name, _ in flag_lines(text)} | set(commented_flags(text))
    missing = sorted(ckptd_flags() - named - {"flagfile", "help", "helpfull", "version"})
    assert not missing, f"deploy/ckptd.flags lacks --{', --'.join(missing)}"


@pytest.mark.parametrize("path", [HOST_FLAGS, DOCKER_FLAGS, "k8s"], ids=["host", "docker", "k8s"])
def test_non_loopback_listeners_authenticate_over_tls(path):
    """ckptd's own rule, per flag file: off loopback, tokens and TLS (or an
    explicit --insecure_no_auth); health probes may be open, they serve no data."""
    text = k8s_flags_text() if path == "k8s" else Path(path).read_text()
    flags = flag_map(text)
    host, _ = host_port(flags.get("listen") or "127.0.0.1:50051")
    if not is_loopback(host):
        assert "insecure_no_auth" not in flags, "a deployed listener must authenticate"
        for needed in ("auth_file", "tls_cert", "tls_key"):
            assert flags.get(needed), f"listen {host} needs --{needed}"


# ---------------------------------------------------------------------------
# A real ckptd from each flag file


@contextlib.contextmanager
def running_ckptd(tmp: Path, args: list[str]) -> Iterator[tuple[int, str]]:
    """ckptd with `args` plus a --port_file; yields (port, log path) once the
    port file exists; SIGTERM and a clean exit at the end."""
    port_file = tmp / "port"
    log = tmp / "ckptd.log"
    with open(log, "wb") as log_out:
        proc = subprocess.Popen([CKPTD, *args, f"--port_file={port_file}"], stdout=log_out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + GUARD_SECONDS
        while not port_file.exists():
            assert proc.poll() is None, f"ckptd exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"ckptd did not start:\n{log.read_text()}"
            time.sleep(0.02)
        yield int(port_file.read_text()), str(log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=GUARD_SECONDS) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ckpt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CKPT, *args], capture_output=True, text=True, env=env, timeout=GUARD_SECONDS)


def make_credentials(tmp: Path) -> tuple[Path, Path, Path, str]:
    """A self-signed certificate for localhost and 127.0.0.1, its key, an auth file with
    one admin token; returns (cert, key, auth_file, token)."""
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    made = json.loads(ckpt("--json", "token", "new", "ops", "admin", "*").stdout)
    auth = tmp / "auth_file"
    auth.write_text("# made by the deploy test\n" + made["auth_file_line"] + "\n")
    return cert, key, auth, made["token"]


def with_port_zero(address: str) -> str:
    host, _ = host_port(address)
    return f"[{host}]:0" if ":" in host else f"{host}:0"


HEALTH_LOG = re.compile(r"health probes \(grpc\.health\.v1 only, plaintext\) on \S+ \(port (\d+)\)")


@pytest.mark.parametrize("source", ["host", "docker", "k8s"])
def test_each_flag_file_configures_a_working_ckptd(tmp_path, source):
    """The file as it is, with only what cannot be used here swapped: each
    port becomes 0 on the same host (so 0.0.0.0 stays 0.0.0.0 and ckptd's
    security checks see the real address), the data dir a scratch one, and
    the secret paths real files made here."""
    if source == "k8s":
        flagfile = tmp_path / "k8s.flags"
        flagfile.write_text(k8s_flags_text())
    else:
        flagfile = HOST_FLAGS if source == "host" else DOCKER_FLAGS
    flags = flag_map(flagfile.read_text())
    overrides = [f"--listen={with_port_zero(flags['listen'])}", f"--data_dir={tmp_path / 'data'}"]
    for listener in ("health_listen", "metrics_listen", "http_listen"):
        if flags.get(listener):
            overrides.append(f"--{listener}={with_port_zero(flags[listener])}")
    tls = bool(flags.get("tls_cert"))
    token = None
    if tls or flags.get("auth_file"):
        cert, key, auth, token = make_credentials(tmp_path)
        overrides += [f"--tls_cert={cert}", f"--tls_key={key}", f"--auth_file={auth}"]
    with running_ckptd(tmp_path, [f"--flagfile={flagfile}", *overrides]) as (port, log):
        # An address, not a name: a fresh root may have no /etc/hosts.
        address = f"127.0.0.1:{port}"
        tls_args = ["--tls_ca", str(tmp_path / "tls.crt")] if tls else []
        r = ckpt("--server", address, *tls_args, "health")
        assert r.returncode == 0, r
        assert r.stdout == f"{address}: SERVING\n"
        if token is not None:
            r = ckpt("--server", address, *tls_args, "runs")
            assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, r
            r = ckpt("--server", address, *tls_args, "--token", token, "runs")
            assert r.returncode == 0, r
        if tls:
            r = ckpt("--server", address, "health")  # plaintext to a TLS port
            assert r.returncode == 1 and "is unreachable" in r.stderr, r
        if flags.get("health_listen"):
            m = HEALTH_LOG.search(Path(log).read_text())
            assert m, Path(log).read_text()
            r = ckpt("--server", f"127.0.0.1:{m.group(1)}", "health")  # plaintext, no token
            assert r.returncode == 0, r
            if source == "docker":
                # The image's HEALTHCHECK command itself, on this port.
                cmd = dockerfile_healthcheck()
                cmd[cmd.index("--server") + 1] = f"127.0.0.1:{m.group(1)}"
                r = ckpt(*cmd[1:])
                assert r.returncode == 0, r
        assert f"data dir {tmp_path / 'data'}" in Path(log).read_text()


# ---------------------------------------------------------------------------
# systemd


def test_systemd_unit_verifies_with_its_hardening(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: deploy/install-deps.sh installs systemd"
    sections = unit_entries(UNIT.read_text())
    exec_start = shlex.split(unit_value(sections, "Service", "ExecStart"))
    # The unit as installed, but with the binary this tree built (verify
    # checks that ExecStart's program exists).
    unit = tmp_path / "ckptd.service"
    unit.write_text(UNIT.read_text().replace(exec_start[0], CKPTD))
    # --man=no: the unit's Documentation= man pages need not be installed
    # here (a fresh machine has no man-db).
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r
    assert "ckptd.service" not in r.stdout + r.stderr, r

    # The threshold is on the internal 0-100 scale: 20 is a shown 2.0.
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True, text=True,
    )
    m = re.search(r"Overall exposure level for ckptd\.service: ([0-9.]+)", r.stdout)
    assert m, r
    assert r.returncode == 0 and float(m.group(1)) <= 2.0, r.stdout

    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""), ("User", "ckptd"),
                      ("Group", "ckptd"), ("StateDirectory", "ckptd")]:
        assert unit_value(sections, "Service", key) == want, key
    # ckptd may write its data dir and nothing else; the flags file it reads
    # names that dir.
    assert exec_start[1:] == ["--flagfile=/etc/ckptd/ckptd.flags"]
    data_dir = flag_map(HOST_FLAGS.read_text())["data_dir"]
    assert unit_value(sections, "Service", "ReadWritePaths").split() == [data_dir]
    assert data_dir == "/var/lib/" + unit_value(sections, "Service", "StateDirectory")
    assert is_loopback(host_port(flag_map(HOST_FLAGS.read_text())["listen"])[0])
    # SIGTERM's grace fits in the stop timeout.
    grace = flag_map(HOST_FLAGS.read_text())["shutdown_grace"]
    assert grace.endswith("s") and int(grace[:-1]) < int(unit_value(sections, "Service", "TimeoutStopSec"))


def test_sysusers_creates_the_units_user(tmp_path):
    assert shutil.which("systemd-sysusers"), "systemd-sysusers missing: deploy/install-deps.sh installs systemd"
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True)
    assert r.returncode == 0, r
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    sections = unit_entries(UNIT.read_text())
    user = users[unit_value(sections, "Service", "User")]
    assert unit_value(sections, "Service", "Group") in groups
    _, _, uid, gid, _, home, shell = user
    assert 0 < int(uid) < 1000, "a system user"
    assert groups[unit_value(sections, "Service", "Group")][2] == gid
    assert home == flag_map(HOST_FLAGS.read_text())["data_dir"]
    assert shell == "/usr/sbin/nologin"


# ---------------------------------------------------------------------------
# Dockerfile and .dockerignore


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Per stage, its (INSTRUCTION, arguments) with continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") and not logical:
            continue
        if raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        logical += raw.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            instruction, _, args = logical.strip().partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            stages[-1].append((instruction.upper(), " ".join(args.split())))
        logical = ""
    return stages


def dockerfile_final_json(instruction: str) -> list[str]:
    args = [a for i, a in dockerfile_stages()[-1] if i == instruction]
    assert len(args) == 1, f"final stage: want one {instruction}"
    return json.loads(args[0])


def dockerfile_healthcheck() -> list[str]:
    """The final stage's HEALTHCHECK command (exec form)."""
    health = [a for i, a in dockerfile_stages()[-1] if i == "HEALTHCHECK"]
    assert len(health) == 1
    options, _, cmd = health[0].partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    return json.loads(cmd)


def test_dockerfile_builds_with_the_tested_script_and_preset():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    build, final = stages[0], stages[-1]
    debian = Path("/etc/debian_version").read_text().split(".")[0]
    assert build[0] == ("FROM", f"debian:{debian} AS build"), "built on the Debian release the tests ran on"
    assert final[0][1] == f"debian:{debian}-slim"
    runs = [a for i, a in build if i == "RUN"]
    copies = [a for i, a in build if i == "COPY"]
    # The install script CI runs (.ci/run) is the image's, copied alone first
    # so that its layer is cached.
    assert "./deploy/install-deps.sh" in (ROOT / ".ci/run").read_text()
    assert copies[0] == "deploy/install-deps.sh deploy/install-deps.sh"
    assert runs[0].startswith("./deploy/install-deps.sh")
    assert copies[1] == ". ."
    # The README's build commands, on the preset the test workflow uses.
    build_cmd = runs[1]
    readme = (ROOT / "README.md").read_text()
    for command in ("cmake --preset default", "cmake --build --preset deploy"):
        assert command in build_cmd
        assert command in readme
    presets = json.loads((ROOT / "CMakePresets.json").read_text())
    deploy = next(p for p in presets["buildPresets"] if p["name"] == "deploy")
    assert deploy["configurePreset"] == "default"
    assert {"ckptd", "ckpt"} <= set(deploy["targets"])
    workflow = next(w for w in presets["workflowPresets"] if w["name"] == "default")
    assert workflow["steps"][0] == {"type": "configure", "name": "default"}


def test_dockerfile_runtime_stage_runs_unprivileged_with_volume_and_healthcheck():
    final = dockerfile_stages()[-1]
    flags = flag_map(DOCKER_FLAGS.read_text())
    user = [a for i, a in final if i == "USER"]
    assert len(user) == 1
    uid, _, gid = user[0].partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric (runAsNonRoot can check it) and not root"
    assert gid.isdigit() and int(gid) > 0
    # Everything after USER runs as it: ENTRYPOINT and HEALTHCHECK follow.
    order = [i for i, _ in final]
    assert order.index("USER") < order.index("ENTRYPOINT")
    volumes = [json.loads(a) if a.startswith("[") else a.split() for i, a in final if i == "VOLUME"]
    assert [flags["data_dir"]] in volumes
    created = " ".join(a for i, a in final if i == "RUN")
    assert f"install -d -o {uid} -g {gid} -m 0750 {flags['data_dir']}" in created, "the volume is the user's"

    entrypoint = dockerfile_final_json("ENTRYPOINT")
    copies = [a.split() for i, a in final if i == "COPY"]
    flags_copy = [c for c in copies if c[0] == "deploy/docker/ckptd.flags"]
    assert flags_copy and entrypoint[1:] == [f"--flagfile={flags_copy[0][1]}"]
    binaries = [c for c in copies if c[0].startswith("--from=build")]
    assert binaries, "the binaries come from the build stage"
    dest = binaries[0][-1]
    copied = {dest + Path(src).name for src in binaries[0][1:-1]}
    assert entrypoint[0] in copied

    cmd = dockerfile_healthcheck()
    assert cmd[0] in copied and cmd[1] == "health", cmd
    server = cmd[cmd.index("--server") + 1]
    health_host, health_port = host_port(flags["health_listen"])
    assert is_loopback(health_host), "the plaintext health port stays inside the container"
    assert server == f"127.0.0.1:{health_port}"
    exposed = " ".join(a for i, a in final if i == "EXPOSE").split()
    assert str(host_port(flags["listen"])[1]) in exposed
    assert str(health_port) not in exposed


def packages_of(libraries: set[str]) -> dict[str, str]:
    """library path -> the Debian package that ships it (one dpkg -S call:
    each is a scan of dpkg's file lists). With merged /usr a library is
    found under /lib or /usr/lib, whichever its package names."""
    candidates = {}
    for library in libraries:
        name = Path(library).name
        for prefix in ("/usr/lib/x86_64-linux-gnu/", "/lib/x86_64-linux-gnu/", "/usr/lib/", "/lib/"):
            candidates[prefix + name] = library
    r = subprocess.run(["dpkg", "-S", *sorted(candidates)], capture_output=True, text=True)
    found = {}
    for line in r.stdout.splitlines():
        package, _, path = line.partition(": ")
        if path in candidates:
            found[candidates[path]] = package.split(",")[0].split(":")[0]
    for library in libraries:
        assert library in found, f"no Debian package ships {library}"
    return found


def depends_closure(packages: set[str]) -> set[str]:
    """`packages` and everything they (pre-)depend on, as dpkg has it."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Pre-Depends}, ${Depends}\n"],
                       capture_output=True, text=True, check=True)
    depends = {}
    for line in r.stdout.splitlines():
        package, _, deps = line.partition("\t")
        names = [d.strip().split(" ")[0].split(":")[0] for d in re.split(r"[,|]", deps)]
        depends[package] = [n for n in names if n]
    for p in packages:
        assert p in depends, f"{p} (Dockerfile) is not a package installed here"
    seen: set[str] = set()
    todo = list(packages)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        # An alternative or virtual name not installed here has no entry; what
        # is installed of an "a | b" dependency is followed.
        todo.extend(depends.get(p, []))
    return seen


def test_dockerfile_runtime_stage_installs_every_library_the_binaries_load():
    final = dockerfile_stages()[-1]
    installs = " ".join(a for i, a in final if i == "RUN")
    m = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", installs)
    assert m, installs
    listed = set(m.group(1).split())
    available = depends_closure(listed)
    loads = {}
    for binary in (CKPTD, CKPT):
        ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for library in re.findall(r"=> (/\S+)", ldd):
            # This host's CUDA toolkit (CKPTD_WITH_CUDA): debian:12 in the
            # build stage has none, so the image's binaries do not load it.
            # ldd names it by the symlink or by the versioned directory
            # (/usr/local/cuda-13.0/...), depending on the binary's RUNPATH.
            if not re.match(r"/usr/local/cuda(-[0-9.]+)?/", library):
                loads.setdefault(library, Path(binary).name)
    assert len(loads) > 10, loads
    for library, package in packages_of(set(loads)).items():
        assert package in available, f"{loads[library]} loads {library} from {package}, which the image lacks"


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(exclude?, regex) per .dockerignore line, Docker's matching: paths
    relative to the context, '*' within a name, '**' across names, a
    matching directory excludes what is in it, '!' re-includes."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        line = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((not include, re.compile(regex + "(?:/.*)?")))
    return patterns


def excluded(path: str, patterns) -> bool:
    result = False
    for exclude, regex in patterns:
        if regex.fullmatch(path):
            result = exclude
    return result


def test_dockerignore_keeps_build_trees_and_git_out_and_the_sources_in():
    patterns = dockerignore_patterns()
    for path in ("build/CMakeCache.txt", "build", "build-asan/server/ckptd", "build-clang/x", "build-fuzz/y",
                 ".git/HEAD", ".git", "ckptd-data/meta/CURRENT", "client/python/ckptd/__pycache__/x.pyc",
                 "tests/python/.pytest_cache/v"):
        assert excluded(path, patterns), f"{path} would be in the Docker build context"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True)
    assert tracked.returncode == 0, tracked.stderr
    files = tracked.stdout.split()
    assert "Dockerfile" in files and "deploy/install-deps.sh" in files
    for path in files:
        assert not excluded(path, patterns), f".dockerignore drops the tracked file {path}"


# ---------------------------------------------------------------------------
# Kubernetes


def k8s_container() -> dict:
    containers = k8s("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def quantity(value) -> float:
    """A Kubernetes quantity: '500m', '4', '1Gi', '512Mi'."""
    s = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * factor
    return float(s)


def test_k8s_manifest_parses_and_names_grpc_probes_on_the_health_port():
    kinds = sorted(d["kind"] for d in k8s_docs())
    assert kinds == ["ConfigMap", "Service", "ServiceMonitor", "StatefulSet"]
    flags = flag_map(k8s_flags_text())
    _, health_port = host_port(flags["health_listen"])
    c = k8s_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc"] == host_port(flags["listen"])[1]
    assert ports["health"] == health_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == health_port, probe
    # The probes cannot do TLS: the health port is plaintext, reached by the
    # kubelet from outside the pod.
    assert not is_loopback(host_port(flags["health_listen"])[0])


def test_k8s_statefulset_has_limits_security_and_its_volumes():
    sts = k8s("StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 1, "one ckptd per data dir"
    pod = spec["template"]["spec"]
    c = k8s_container()
    res = c["resources"]
    for kind in ("cpu", "memory"):
        assert quantity(res["requests"][kind]) > 0
        assert quantity(res["limits"][kind]) >= quantity(res["requests"][kind]), kind

    user = [a for i, a in dockerfile_stages()[-1] if i == "USER"][0]
    uid, _, gid = user.partition(":")
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == int(uid) and sc["runAsGroup"] == int(gid)
    assert sc["fsGroup"] == int(gid), "the volume is writable by the image's user"
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert pod["terminationGracePeriodSeconds"] > int(flag_map(k8s_flags_text())["shutdown_grace"].rstrip("s"))

    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    flags = flag_map(k8s_flags_text())
    claims = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
    assert mounts[flags["data_dir"]] in claims, "the data dir is on a PersistentVolumeClaim"
    volumes = {v["name"]: v for v in pod["volumes"]}
    # --flagfile names the ConfigMap's key where it is mounted.
    (flagfile,) = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--flagfile=")]
    config_dir = str(Path(flagfile).parent)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == k8s("ConfigMap")["metadata"]["name"]
    assert Path(flagfile).name in k8s("ConfigMap")["data"]
    for flag in ("auth_file", "tls_cert", "tls_key"):
        secret_dir = str(Path(flags[flag]).parent)
        assert "secret" in volumes[mounts[secret_dir]], f"--{flag} comes from a Secret"


def test_k8s_service_and_servicemonitor_select_what_exists():
    sts = k8s("StatefulSet")
    svc = k8s("Service")
    mon = k8s("ServiceMonitor")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service is headless"
    container_ports = {p["name"] for p in k8s_container()["ports"]}
    service_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for p in service_ports.values():
        assert p["targetPort"] in container_ports, p
    assert mon["apiVersion"] == "monitoring.coreos.com/v1"
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    for endpoint in mon["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports, endpoint
    assert service_ports["metrics"]["port"] == 9464
