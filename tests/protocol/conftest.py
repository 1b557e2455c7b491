"""
Fixtures for the protocol tests.

The cross-check's Xen tool is fetched once per session and never skipped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import attrs
import pytest

REPO = Path(__file__).resolve().parents[2]
FETCH = REPO / "tools" / "fetch-xen-stream-tools.sh"
DEST = REPO / "build" / "xen-tools"


@attrs.frozen
class XenTools:
    verify_stream: Path
    pythonpath: Path


@pytest.fixture(scope="session")
def xen_tools() -> XenTools:
    result = subprocess.run([str(FETCH), str(DEST)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"{FETCH} could not fetch Xen's stream tools:\n{result.stdout}\n{result.stderr}")
    base = DEST / "usr" / "lib" / "xen-4.17"
    return XenTools(verify_stream=base / "bin" / "verify-stream-v2", pythonpath=base / "lib" / "python")
