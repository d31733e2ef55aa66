"""The README quick start: tests/python/quickstart_example.py runs against a
real server, and README.md carries exactly that code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


EXAMPLE = Path(__file__).with_name("quickstart_example.py")
README = Path(__file__).resolve().parents[2] / "README.md"


def test_quickstart_example_runs(server):
    env = dict(os.environ, CKPTD_SERVER=server.address)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch 4:" in result.stdout
    assert re.search(r"loaded quickstart-mlp@\d+ \(epoch \d", result.stdout), result.stdout
    assert "resuming after epoch 4" in result.stdout


def test_readme_contains_the_quickstart_example():
    # A missing README or example is a failure, not a skip: the quick start is
    # documentation users copy.
    assert README.is_file(), f"{README} does not exist"
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert blocks, f"{README} has no ```python block (the quick start belongs there)"
    example = EXAMPLE.read_text().strip()
    assert any(block.strip() == example for block in blocks), (
        "README.md's Python quick start differs from tests/python/quickstart_example.py; keep them identical"
    )
