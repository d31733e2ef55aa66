"""`cmake --install <build> --component python` yields a package that
/usr/bin/python3 imports, without the server or the CLI being built or
installed.

The build tree is $CKPTD_BUILD_DIR (ctest sets it), else the one the
imported ckptd comes from (``<build>/python/ckptd``).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Dict

import pytest

import ckptd

SYSTEM_PYTHON = "/usr/bin/python3"
INSTALL_TIMEOUT_SECONDS = 300

PROBE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import ckptd, ckptd._native
    print(json.dumps({
        "file": ckptd.__file__,
        "native": ckptd._native.__file__,
        "version": ckptd.__version__,
        "default_address": ckptd._native.default_server_address(),
        "has_client": hasattr(ckptd, "Client"),
    }))
    """
)


def build_dir() -> Path:
    env = os.environ.get("CKPTD_BUILD_DIR")
    if env:
        path = Path(env)
        assert (path / "CMakeCache.txt").is_file(), f"CKPTD_BUILD_DIR={env} is not a CMake build tree"
        return path
    candidate = Path(ckptd.__file__).resolve().parents[2]
    if not (candidate / "CMakeCache.txt").is_file():
        pytest.skip(f"ckptd comes from {Path(ckptd.__file__).parent}, not a CMake build tree; set CKPTD_BUILD_DIR")
    return candidate


def cmake_cache(build: Path) -> Dict[str, str]:
    out = {}
    for line in (build / "CMakeCache.txt").read_text().splitlines():
        if line and not line.startswith(("#", "//")) and "=" in line:
            key, value = line.split("=", 1)
            out[key.split(":", 1)[0]] = value
    return out


def test_component_install_is_importable_by_system_python(tmp_path):
    build = build_dir()
    cache = cmake_cache(build)
    destdir = tmp_path / "root"
    result = subprocess.run(
        [cache["CMAKE_COMMAND"], "--install", str(build), "--component", "python"],
        env=dict(os.environ, DESTDIR=str(destdir)),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    prefix = cache["CMAKE_INSTALL_PREFIX"]
    site_dir = f"{prefix.rstrip('/')}/{cache['CKPTD_PYTHON_INSTALL_DIR']}"
    site = destdir / site_dir.lstrip("/")
    installed = sorted(str(p.relative_to(destdir)) for p in destdir.rglob("*") if p.is_file())
    package = site / "ckptd"
    # Only the package: no server, CLI or headers come with the component.
    assert installed and all(Path(destdir / f).is_relative_to(package) for f in installed), installed
    names = {Path(f).name for f in installed}
    assert {"__init__.py", "client.py", "_version.py", "py.typed"} <= names, installed
    assert any(n.startswith("_native.") and n.endswith(".so") for n in names), installed

    # -I: no PYTHONPATH, no user site, so the installed copy is what loads.
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", PROBE, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).resolve().is_relative_to(destdir.resolve()), found
    assert Path(found["native"]).resolve().is_relative_to(package.resolve()), found
    assert found["version"] == ckptd.__version__
    assert found["has_client"] and found["default_address"]

    # The default install dir (client/python/CMakeLists.txt) is one
    # /usr/bin/python3 searches by itself, for /usr and /usr/local.
    if prefix in ("/usr", "/usr/local") and cache["CKPTD_PYTHON_INSTALL_DIR"] == default_install_dir(prefix):
        assert site_dir in system_sys_path(), f"{site_dir} is not on {SYSTEM_PYTHON}'s sys.path"


def default_install_dir(prefix: str) -> str:
    if prefix == "/usr":
        return "lib/python3/dist-packages"
    version = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    return f"lib/python{version}/dist-packages"


def system_sys_path():
    out = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return json.loads(out)
