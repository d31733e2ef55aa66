"""A transfer that stops making progress fails instead of hanging: streams
carry no deadline (an upload may take hours), so the client cancels one that
moves no bytes for ``timeout`` seconds, and keepalive pings close a
connection that went silent; the retries then run out.

The proxy stops forwarding client -> server bytes in the middle of the
upload (a hung server or a black-holed network path): nothing is reset,
the TCP connection stays open and silent.
"""

from __future__ import annotations

import pytest
import torch
from _cut_proxy import CutProxy

import ckptd

MiB = 1 << 20


def test_stalled_upload_fails_with_deadline_exceeded(server, run_name):
    state = {"w": torch.randn(16 * MiB, generator=torch.Generator().manual_seed(3))}  # 64 MiB
    with CutProxy(server.address, hold_after=8 * MiB) as proxy:
        client = ckptd.Client(proxy.address, timeout=2, max_attempts=3)
        with pytest.raises((ckptd.DeadlineExceededError, ckptd.UnavailableError)) as err:
            client.save(run_name, state, step=1)
        assert proxy.held.is_set(), "the proxy never held the upload"
        # Either the stall watchdog ("no progress") or the retries ("gave up").
        assert "no progress" in str(err.value) or "gave up after" in str(err.value), str(err.value)
        proxy.release()
    direct = ckptd.Client(server.address)
    # Nothing of the stalled save is visible; a save that can move completes.
    assert direct.versions(run_name) == []  # the run exists: BeginVersion got through
    info = direct.save(run_name, state, step=1)
    assert info.state == "COMMITTED"
    assert torch.equal(direct.load(run_name, info.version)["w"], state["w"])
