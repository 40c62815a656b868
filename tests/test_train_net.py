"""train_net.py end to end: the quick schedule learns, --eval-only reproduces its AP, --resume continues an
interrupted run, and two gloo processes train together (--num-gpus 2 on CPU)."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_trained import (
    CONFIG,
    REPO,
    copypaste_blocks,
    copypaste_results,
    run_train_net,
    synthetic_root,
    trained_tiny,
)

from glip_d2.checkpoint.safe_load import load_checkpoint_file
from glip_d2.engine.defaults import load_glip_cfg

#: bbox AP50 / AP the quick schedule must reach on synthetic_test, the held-out split no recipe was tuned on (the
#: recipe was tuned on synthetic_val). Measured (800 iterations, 2 CPU cores, ~8.5 min): test AP50 26.2, AP 13.8
#: (val: 25.0 / 13.2). The schedule that bound no names (official log_scale init, LR 5e-4, 300 iterations)
#: scored val AP50 3.3 / AP 1.5 and the untrained model 0.0, so 12 / 8 fail a model that only finds boxes, with a
#: wide margin below the measured values for run-to-run noise.
MIN_AP50 = 12.0
MIN_AP = 8.0


def _small_run_opts(out, root):
    """A few iterations of the tiny model on an 8-image synthetic set (fast: resume and gloo tests)."""
    return [
        "OUTPUT_DIR", str(out), "DATASETS.SYNTHETIC.ROOT", str(root),
        "DATASETS.SYNTHETIC.NUM_TRAIN", "8", "DATASETS.SYNTHETIC.NUM_VAL", "2",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
        "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(0.5,)",
    ]


def _env():
    env = os.environ.copy()
    env["OMP_NUM_THREADS"] = "1"  # one thread per process: timing independent of other jobs on the machine
    return env


# -------------------------------------------------------------------------------------------------- fast tests
def test_parser_has_detectron2_interface():
    sys.path.insert(0, REPO)
    import train_net

    args = train_net.parse_args(
        ["--config-file", "x.yaml", "--eval-only", "--resume", "--num-gpus", "2", "--num-machines", "1",
         "--machine-rank", "0", "--dist-url", "auto", "SOLVER.MAX_ITER", "5"]
    )
    assert (args.config_file, args.eval_only, args.resume, args.num_gpus) == ("x.yaml", True, True, 2)
    assert args.dist_url == "auto" and args.opts == ["SOLVER.MAX_ITER", "5"]


def test_quick_schedule_config_loads():
    cfg = load_glip_cfg(CONFIG, ["SOLVER.MAX_ITER", "7"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.META_ARCHITECTURE == "GLIP"
    assert cfg.DATASETS.TRAIN == ("synthetic_train",) and cfg.DATASETS.TEST == ("synthetic_val",)
    if not torch.cuda.is_available():
        assert load_glip_cfg(CONFIG, ["MODEL.DEVICE", "cuda"]).MODEL.DEVICE == "cpu"
    with pytest.raises(ValueError, match="KEY VALUE"):
        load_glip_cfg(CONFIG, ["SOLVER.MAX_ITER"])


# -------------------------------------------------------------------------------------------------- slow tests
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return trained_tiny(tmp_path_factory)


@pytest.mark.slow
def test_quick_schedule_learns(tiny_run):
    ap50 = tiny_run["results"]["AP50"]
    losses = [m["total_loss"] for m in tiny_run["metrics"] if "total_loss" in m]
    # measured 4.28 -> 2.70 (x0.63); the centerness term alone has a floor of ~0.64 (entropy of its soft targets)
    assert losses[-1] < 0.8 * losses[0], f"training loss did not fall: {losses}"
    final = [m for m in tiny_run["metrics"] if "bbox/AP50" in m]
    assert final and final[-1]["bbox/AP50"] == pytest.approx(ap50, abs=1e-3)  # JSON metrics hold the eval too
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tiny_run["output_dir"]))  # TensorBoard
    assert "eta:" in tiny_run["log"]


@pytest.mark.slow
def test_eval_only_reproduces_final_ap_and_generalises(tiny_run, tmp_path, tmp_path_factory):
    """--eval-only on synthetic_val gives the training run's final numbers exactly; on the held-out synthetic_test
    the model reaches the thresholds above."""
    output = run_train_net(
        ["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", tiny_run["weights"], "OUTPUT_DIR", str(tmp_path),
         "DATASETS.SYNTHETIC.ROOT", synthetic_root(tmp_path_factory),
         "DATASETS.TEST", '("synthetic_val", "synthetic_test")'],
        log_path=tmp_path / "eval.log", env=_env(),
    )
    again, held_out = copypaste_blocks(output)[-2:]
    assert again.keys() == tiny_run["results"].keys()
    for name, value in tiny_run["results"].items():  # identical numbers (NaN for empty size ranges included)
        assert again[name] == value or (math.isnan(again[name]) and math.isnan(value)), name
    assert held_out["AP50"] >= MIN_AP50, f"bbox AP50 {held_out['AP50']:.1f} < {MIN_AP50} on synthetic_test"
    assert held_out["AP"] >= MIN_AP, f"bbox AP {held_out['AP']:.1f} < {MIN_AP} on synthetic_test"


def _wait_for(path, proc, timeout):
    start = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"training exited (rc={proc.returncode}) before writing {path}")
        if time.time() - start > timeout:
            raise AssertionError(f"{path} not written within {timeout} s")
        time.sleep(0.5)


@pytest.mark.slow
def test_resume_continues_interrupted_training(tmp_path):
    out, root = tmp_path / "run", tmp_path / "synthetic"
    args = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG,
            *_small_run_opts(out, root), "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "3"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
        try:
            _wait_for(out / "last_checkpoint", proc, timeout=600)  # written after model_0000002.pth
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # interrupt hard, mid-schedule
            proc.wait()
    assert (out / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    assert not (out / "model_final.pth").exists()

    output = run_train_net(["--config-file", CONFIG, "--resume", *_small_run_opts(out, root), "SOLVER.MAX_ITER", "8",
                            "SOLVER.CHECKPOINT_PERIOD", "3"], log_path=tmp_path / "second.log", env=_env())
    assert "Starting training from iteration 3" in output
    final = load_checkpoint_file(str(out / "model_final.pth"))
    assert final["iteration"] == 7
    # optimizer and LR schedule resumed too: 8 AdamW steps and 8 scheduler steps in total, not 5
    steps = {float(s["step"]) for s in final["trainer"]["_trainer"]["optimizer"]["state"].values()}
    assert steps == {8.0}
    sched = next(v for k, v in final["trainer"]["hooks"].items() if k.endswith("LRScheduler"))
    assert sched["last_epoch"] == 8
    copypaste_results(output)  # the final evaluation ran


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    out, root = tmp_path / "run", tmp_path / "synthetic"
    output = run_train_net(
        ["--config-file", CONFIG, "--num-gpus", "2", "--dist-url", "auto", *_small_run_opts(out, root),
         "SOLVER.MAX_ITER", "3"],
        log_path=tmp_path / "ddp.log", env=_env(),
    )
    assert "World size: 2" in output
    assert "DistributedDataParallel over 2 processes (gloo)" in output
    assert (out / "log.txt.rank1").exists()
    final = load_checkpoint_file(str(out / "model_final.pth"))
    assert final["iteration"] == 2
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    assert any("total_loss" in m for m in metrics)  # losses gathered from both ranks and written by rank 0
    copypaste_results(output)  # distributed evaluation gathered and scored on rank 0
