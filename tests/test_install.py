"""The installer is idempotent (a second run finds the environment up to date and returns quickly), and its
detectron2 v0.6 source patches apply exactly once."""
import importlib.util
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


def _patcher():
    spec = importlib.util.spec_from_file_location("patch_detectron2_v06", REPO / "tools" / "patch_detectron2_v06.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detectron2_patches_apply_once_and_refuse_other_sources(tmp_path):
    """On a tree holding exactly the v0.6 texts: every patch applies, a second run changes nothing, and a file
    with neither the v0.6 nor the patched text (another sdist) stops the install."""
    patcher = _patcher()
    files = {}
    for p in patcher.PATCHES:
        files.setdefault(p.path, []).extend([p.old] * p.count)
    for path, parts in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("\n# ...\n".join(parts))
    (tmp_path / "detectron2" / "utils").mkdir(parents=True, exist_ok=True)

    changes = patcher.patch_tree(tmp_path)
    assert len(changes) == len(patcher.PATCHES) + len(patcher.NEW_FILES)
    for p in patcher.PATCHES:
        text = (tmp_path / p.path).read_text()
        assert p.old not in text and text.count(p.new) >= p.count, p
    assert patcher.patch_tree(tmp_path) == []

    launch = tmp_path / "detectron2" / "engine" / "launch.py"
    launch.write_text(launch.read_text().replace('"NCCL" if has_gpu else "GLOO"', '"nccl"'))
    with pytest.raises(patcher.UnexpectedSource, match="launch.py"):
        patcher.patch_tree(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None, reason="no detectron2")
def test_installed_detectron2_has_the_patches_if_it_is_pb1():
    out = subprocess.run([sys.executable, "tools/patch_detectron2_v06.py", "--check-installed"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
