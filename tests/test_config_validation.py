"""Training config checked before anything is built: a schedule fvcore would reject, or an OUTPUT_DIR that cannot be
written, fails at once with the keys and values named."""
import argparse
from pathlib import Path

import pytest

from glip_d2.engine.config_validation import check_output_dir, solver_problems, validate_training_config
from glip_d2.engine.defaults import default_glip_setup, load_glip_cfg

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quick_schedules" / "glip_tiny_synthetic.yaml")  # SOLVER.STEPS (0.95,)


def _cfg(tmp_path, *opts, config=QUICK):
    return load_glip_cfg(config, ["OUTPUT_DIR", str(tmp_path / "out"), *opts])


@pytest.mark.parametrize("config", ["quick_schedules/glip_tiny_synthetic.yaml", "quick_schedules/Base-GLIP-tiny.yaml",
                                    "GLIP-T_C.yaml", "GLIP-L.yaml", "GLIP-T_A.yaml"])
def test_shipped_configs_pass(tmp_path, config):
    cfg = _cfg(tmp_path, config=str(REPO / "configs" / config))
    validate_training_config(cfg)
    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").iterdir()) == []  # probe file removed


def test_max_iter_zero_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"SOLVER.MAX_ITER 0: must be an integer >= 1"):
        validate_training_config(_cfg(tmp_path, "SOLVER.MAX_ITER", "0"))


def test_short_run_with_fractional_steps_is_a_clear_error(tmp_path):
    """Quick schedule with MAX_ITER 5: (0.95,) resolves to step 5, which fvcore rejects deep inside the scheduler."""
    with pytest.raises(ValueError, match=r"SOLVER.STEPS \(0.95,\) \(resolved: \[5\]\) with SOLVER.MAX_ITER 5: every "
                                         r"step must be in 1..4"):
        validate_training_config(_cfg(tmp_path, "SOLVER.MAX_ITER", "5"))
    for max_iter in range(1, 11):  # round(0.95 * MAX_ITER) == MAX_ITER for all of them; 11 is the first that runs
        problems = solver_problems(_cfg(tmp_path, "SOLVER.MAX_ITER", str(max_iter)))
        assert any("SOLVER.STEPS" in p and f"SOLVER.MAX_ITER {max_iter}:" in p for p in problems), max_iter
    assert not solver_problems(_cfg(tmp_path, "SOLVER.MAX_ITER", "11"))
    validate_training_config(_cfg(tmp_path, "SOLVER.MAX_ITER", "5", "SOLVER.STEPS", "()"))  # the suggested fix


def test_every_schedule_problem_is_listed_at_once(tmp_path):
    cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(60, 0.5)", "SOLVER.WARMUP_ITERS", "-1",
               "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.WARMUP_FACTOR", "2.0")
    with pytest.raises(ValueError) as e:
        validate_training_config(cfg)
    msg = str(e.value)
    assert "SOLVER.STEPS (60, 0.5) (resolved: [60, 50]): steps must be strictly increasing" in msg
    assert "SOLVER.WARMUP_ITERS -1" in msg and "SOLVER.CHECKPOINT_PERIOD 0" in msg and "SOLVER.WARMUP_FACTOR 2.0" in msg
    assert not (tmp_path / "out").exists()  # nothing written before the schedule is fine
    assert solver_problems(_cfg(tmp_path, "SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(100,)"))  # == MAX_ITER
    assert not solver_problems(_cfg(tmp_path, "SOLVER.MAX_ITER", "5", "SOLVER.STEPS", "(0.95,)",
                                    "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"))  # cosine ignores STEPS


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"OUTPUT_DIR '.*a_file/run' is not writable"):
        check_output_dir(str(tmp_path / "a_file" / "run"))
    with pytest.raises(ValueError, match="OUTPUT_DIR is empty"):
        check_output_dir("")


def test_train_net_setup_and_trainer_check_before_building(tmp_path):
    """train_net.py's setup checks before detectron2's default_setup writes into OUTPUT_DIR; GLIPTrainer before
    it builds the data, model or optimizer; --eval-only checks OUTPUT_DIR only."""
    from glip_d2.engine import GLIPTrainer

    cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", "0")
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER 0"):
        default_glip_setup(cfg, argparse.Namespace(eval_only=False))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER 0"):
        GLIPTrainer(cfg)
    (tmp_path / "a_file").write_text("")
    cfg = load_glip_cfg(QUICK, ["OUTPUT_DIR", str(tmp_path / "a_file" / "x"), "SOLVER.MAX_ITER", "0"])
    with pytest.raises(OSError, match="OUTPUT_DIR"):
        default_glip_setup(cfg, argparse.Namespace(eval_only=True))
