"""The installer is idempotent: a second run finds the environment up to date and returns quickly."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO / ".venv").resolve(), reason="not running in the repo .venv")
def test_second_install_is_a_no_op():
    start = time.time()
    out = subprocess.run(
        ["bash", "tools/install_env.sh"], cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout
    assert time.time() - start < 30
