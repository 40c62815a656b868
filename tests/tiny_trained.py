"""One tiny GLIP trained per test session on the synthetic set, shared by the slow tests of the engine files.

``trained_tiny(tmp_path_factory)`` runs the quick schedule once through ``train_net.py`` (the real command, in a
subprocess) and returns where its checkpoint, logs and final evaluation are. Later calls in the same session reuse
it. Not a test module (no ``test_`` prefix): imported by tests/test_train_net.py, test_predictor.py, test_demo.py.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "glip_tiny_synthetic.yaml")
_CACHE = {}


def run_train_net(args, *, log_path, timeout=1800, env=None):
    """Run ``train_net.py ARGS`` from the repository root; return its combined output (raises on failure)."""
    cmd = [sys.executable, os.path.join(REPO, "train_net.py")] + [str(a) for a in args]
    with open(log_path, "w") as log:
        proc = subprocess.run(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env or os.environ.copy(),
            check=False,
        )
    with open(log_path) as f:
        output = f.read()
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed (rc={proc.returncode}); end of output:\n{output[-4000:]}")
    return output


def iou_xyxy(a, b) -> float:
    """IoU of two xyxy boxes (continuous convention; a +-1 px convention difference does not matter in tests)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def copypaste_blocks(output: str) -> list:
    """Every detectron2 "copypaste" AP block of a log as {metric: value}, in order (one per evaluated dataset)."""
    blocks = re.findall(r"copypaste: (AP,AP50[^\n]*)\n[^\n]*copypaste: ([-\d.,nan]+)", output)
    if not blocks:
        raise AssertionError("no 'copypaste: AP,...' evaluation block in the output")
    return [dict(zip(names.split(","), [float(v) for v in values.split(",")])) for names, values in blocks]


def copypaste_results(output: str):
    """The last detectron2 "copypaste" AP block of a log as {metric: value}."""
    return copypaste_blocks(output)[-1]


def synthetic_root(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "synthetic")


def trained_tiny(tmp_path_factory):
    """Train the quick schedule once per session; returns dict(output_dir, weights, log, results, metrics)."""
    if "run" in _CACHE:
        return _CACHE["run"]
    reuse = os.environ.get("GLIP_D2_TEST_TINY_RUN")  # developers: an earlier run's output dir, to skip training
    if reuse:
        out = pathlib.Path(reuse)
        with open(out / "stdout.log") as f:
            log = f.read()
    else:
        out = tmp_path_factory.getbasetemp() / "glip_tiny_synthetic"
        out.mkdir(exist_ok=True)
        log = run_train_net(
            ["--config-file", CONFIG, "OUTPUT_DIR", str(out), "DATASETS.SYNTHETIC.ROOT",
             synthetic_root(tmp_path_factory)],
            log_path=out / "stdout.log",
        )
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    _CACHE["run"] = {
        "output_dir": str(out),
        "weights": str(out / "model_final.pth"),
        "log": log,
        "results": copypaste_results(log),
        "metrics": metrics,
    }
    return _CACHE["run"]
