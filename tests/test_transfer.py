"""Transfer: tuning modes train exactly their parameters, the prompt offset starts as the base model, task files
round-trip bit-exactly (alone and several over one base), K-shot sampling, the epoch schedule, and the trainer
end to end in prompt mode (optimizer over the offset only, a small task checkpoint, --eval-only from it)."""
import copy
import math
import os
import random
import sys

import cv2
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from tiny_trained import REPO, copypaste_results, run_train_net

from glip_d2 import add_glip_config
from glip_d2.checkpoint import ChecksumMismatchError, GLIPCheckpointer, atomic_torch_save
from glip_d2.checkpoint.task_file import TaskInfo, read_task_file
from glip_d2.data.datasets.synthetic_domains import DOMAINS, register_synthetic_domain
from glip_d2.data.few_shot import epoch_iterations, few_shot_subset, repeat_records
from glip_d2.data.mapper import GroundingDatasetMapper
from glip_d2.engine.config_validation import solver_problems
from glip_d2.engine.predictor import GLIPPredictor
from glip_d2.engine.task_bank import TaskBank
from glip_d2.modeling.tuning import LINEAR_PROBE_NAMES, TUNING_MODES, canonical_tuning_mode

TINY = os.path.join(REPO, "configs", "quick_schedules", "Base-GLIP-tiny.yaml")
DOMAIN = "renamed"


def _cfg(mode="", **overrides):
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(TINY)
    cfg.MODEL.LANGUAGE.PRETRAINED = True
    cfg.SOLVER.TUNING_MODE = mode
    cfg.DATASETS.TRAIN = (f"synthetic_{DOMAIN}_train",)
    cfg.DATASETS.TEST = (f"synthetic_{DOMAIN}_val",)
    cfg.INPUT.PROMPT.SHUFFLE = False
    cfg.INPUT.FLIP_PROB_TRAIN = 0.0
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data") / "synthetic_domains")  # where train_net looks (SYNTHETIC.ROOT + _domains)
    register_synthetic_domain(DOMAIN, root, seed=0)
    return root


@pytest.fixture(scope="module")
def batch(domain):
    mapper = GroundingDatasetMapper(_cfg(), is_train=True, dataset_name=f"synthetic_{DOMAIN}_train")
    random.seed(0)
    return [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(f"synthetic_{DOMAIN}_train")[:2]]


@pytest.fixture(scope="module")
def test_inputs(domain):
    mapper = GroundingDatasetMapper(_cfg(), is_train=False, dataset_name=f"synthetic_{DOMAIN}_val")
    return [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(f"synthetic_{DOMAIN}_val")[:2]]


def _model(mode="", seed=0):
    torch.manual_seed(seed)
    model = build_model(_cfg(mode, **{"MODEL.ATSS.INFERENCE_TH": 0.0}))  # random weights score low
    if mode:
        model.set_tuning_mode(mode)
    return model


def _expected_trainable(mode: str, name: str) -> bool:
    """The official semantics, written independently of glip_d2.modeling.tuning's code."""
    if mode == "full":
        return True
    if mode in ("language_prompt_v1", "language_prompt_v3"):
        return name.startswith("language_encoder.")
    if mode in ("prompt", "language_prompt_v4"):
        return name.startswith("prompt_offset.")
    assert mode == "linear_probe"
    return name in {"head.bbox_pred.weight", "head.bbox_pred.bias", "head.centerness.weight", "head.centerness.bias",
                    "head.text_proj.weight", "head.text_proj.bias", "head.log_scale", "head.bias_lang", "head.bias0"}


@pytest.mark.parametrize("mode", sorted(TUNING_MODES))
def test_mode_trains_exactly_its_parameters_and_keeps_frozen_parts_in_eval(mode, batch):
    model = _model(mode)
    named = dict(model.named_parameters())
    expected = {n for n in named if _expected_trainable(mode, n)}
    assert {n for n, p in named.items() if p.requires_grad} == expected
    before = {n: p.detach().clone() for n, p in named.items()}
    model.train()
    spec = TUNING_MODES[mode]  # frozen parts stay in eval mode (no dropout / drop-path) through train()
    assert all(m.training for m in model.backbone.bottom_up.modules()) is not spec.freeze_body
    assert all(m.training for m in model.vl_tower.modules()) is not spec.freeze_head
    assert model.language_encoder.training is not spec.freeze_language
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    opt.step()
    changed = {n for n, p in named.items() if not torch.equal(p.detach(), before[n])}
    assert changed, "one SGD step changed nothing"
    assert changed <= expected, f"frozen parameters changed: {sorted(changed - expected)[:5]}"
    # every expected tensor with a real gradient changed (attention key biases get ~1e-12: softmax ignores them)
    with_grad = {n for n in expected if named[n].grad is not None and named[n].grad.abs().max() > 1e-6}
    assert with_grad <= changed


def test_official_mode_names_and_errors():
    assert canonical_tuning_mode("language_prompt_v2") == "prompt"
    assert canonical_tuning_mode("linear_prob") == "linear_probe"
    assert canonical_tuning_mode("") == ""
    with pytest.raises(ValueError, match="SOLVER.TUNING_MODE must be"):
        canonical_tuning_mode("prompt_v9")
    problems = solver_problems(_cfg("prompt", **{"SOLVER.EMA_DECAY": 0.999}))
    assert any("EMA_DECAY" in p for p in problems)
    assert any("FEW_SHOT" in p for p in solver_problems(_cfg(**{"DATASETS.FEW_SHOT": -1})))
    assert all("head." in n or "cls_score." in n or n in ("bbox_pred.", "centerness.") for n in LINEAR_PROBE_NAMES)


@torch.no_grad()
def _outputs(model, inputs):
    model.eval()
    out = model(copy.deepcopy(inputs))
    return [(o["instances"].pred_boxes.tensor, o["instances"].scores, o["instances"].pred_classes) for o in out]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for ta, tb in zip(a, b) for x, y in zip(ta, tb)) and len(a) == len(b)


def test_zero_prompt_offset_is_the_base_model(test_inputs):
    base = _model("", seed=3)
    tuned = _model("prompt", seed=3)
    assert torch.count_nonzero(tuned.prompt_offset.weight) == 0
    assert len(_outputs(base, test_inputs)[0][1]) > 0
    assert _same(_outputs(base, test_inputs), _outputs(tuned, test_inputs))


def _tune(model, seed):
    """Stand-in for training: random values in every trainable tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _save_task(model, path, base_file, mode):
    info = TaskInfo(tuning_mode=mode, base_weights=base_file, base_sha256=_sha(base_file),
                    thing_classes=DOMAINS[DOMAIN].thing_classes, name=f"task_{mode}")
    GLIPCheckpointer(model, os.path.dirname(path), task_info=info).save(os.path.basename(path)[:-4])
    return path


def _sha(path):
    from glip_d2.checkpoint import sha256_of_file

    return sha256_of_file(path)


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("base") / "base.pth")
    atomic_torch_save({"model": _model("", seed=5).state_dict()}, path)
    return path


@pytest.mark.parametrize("mode", ["prompt", "linear_probe"])
def test_task_file_round_trip_is_bit_exact(mode, base_file, test_inputs, tmp_path):
    tuned = _model(mode, seed=11)
    GLIPCheckpointer(tuned).load(base_file)
    _tune(tuned, seed=1)
    task = _save_task(tuned, str(tmp_path / "task.pth"), base_file, mode)
    info, weights, _ = read_task_file(task)
    assert info.tuning_mode == mode and set(weights) == {n for n, p in tuned.named_parameters() if p.requires_grad}
    full_size = sum(v.numel() * v.element_size() for v in tuned.state_dict().values())
    assert os.path.getsize(task) < full_size / 20  # what was tuned only

    fresh = _model("", seed=99)  # a model built without the tuning mode, other random init
    GLIPCheckpointer(fresh).load(task)  # loads base.pth first, then the tuned tensors
    assert _same(_outputs(tuned, test_inputs), _outputs(fresh, test_inputs))
    with torch.no_grad():
        expected = tuned.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())


def test_task_file_refuses_another_base(base_file, tmp_path):
    tuned = _model("prompt", seed=11)
    _tune(tuned, seed=1)
    task = _save_task(tuned, str(tmp_path / "task.pth"), base_file, "prompt")
    other = str(tmp_path / "other.pth")
    atomic_torch_save({"model": _model("", seed=6).state_dict()}, other)
    with pytest.raises(ChecksumMismatchError, match="was tuned from"):
        GLIPCheckpointer(_model(""), task_base_weights=other).load(task)


def test_task_bank_switches_between_tasks(base_file, test_inputs, tmp_path):
    models, files = {}, {}
    for i, mode in enumerate(["prompt", "linear_probe"]):
        m = _model(mode, seed=11)
        GLIPCheckpointer(m).load(base_file)
        _tune(m, seed=i + 1)
        models[mode], files[mode] = m, _save_task(m, str(tmp_path / f"{mode}.pth"), base_file, mode)
    base = _model("", seed=12)
    GLIPCheckpointer(base).load(base_file)
    base_out = _outputs(base, test_inputs)
    bank = TaskBank(base, base_file)
    names = {mode: bank.add(path) for mode, path in files.items()}
    assert _same(_outputs(base, test_inputs), base_out)  # adding activates nothing
    for mode in ["prompt", "linear_probe", "prompt"]:
        bank.activate(names[mode])
        assert _same(_outputs(base, test_inputs), _outputs(models[mode], test_inputs)), mode
    bank.activate(None)
    assert _same(_outputs(base, test_inputs), base_out)
    with pytest.raises(KeyError, match="no task named"):
        bank.activate("nope")


def _records(cats_per_image):
    return [{"image_id": i + 1, "annotations": [{"bbox": [0, 0, 10, 10], "bbox_mode": 1, "category_id": c}
                                                 for c in cats]} for i, cats in enumerate(cats_per_image)]


def test_few_shot_follows_the_official_greedy_rule():
    records = _records([[0], [0, 1], [1], [2], [0, 2], [], [1, 2]])
    kept = few_shot_subset(records, 1, seed=0)
    # file order: image 1 (cat 0) kept, image 2 (cat 1 still needed) kept, 3 not, 4 (cat 2) kept, rest not
    assert [r["image_id"] for r in kept] == [1, 2, 4]
    two = few_shot_subset(records, 2, seed=0)
    assert [r["image_id"] for r in two] == [1, 2, 3, 4, 5]
    assert few_shot_subset(records, 0) == records
    # seeded: the official random.Random(seed).shuffle of the sorted usable ids, then the same greedy pass
    ids = [1, 2, 3, 4, 5, 7]
    random.Random(3).shuffle(ids)
    by_id = {r["image_id"]: r for r in records}
    needed, expected = {0: 1, 1: 1, 2: 1}, []
    for i in ids:
        cats = {a["category_id"] for a in by_id[i]["annotations"]}
        if any(needed[c] > 0 for c in cats):
            expected.append(i)
            for c in cats:
                needed[c] -= 1
    assert [r["image_id"] for r in few_shot_subset(records, 1, seed=3)] == expected
    assert few_shot_subset(records, 1, seed=3) == few_shot_subset(records, 1, seed=3)
    assert repeat_records([1, 2], 3) == [1, 2, 1, 2, 1, 2]
    assert epoch_iterations(10, 12, 4) == 30
    with pytest.raises(ValueError, match="category_id"):
        few_shot_subset([{"image_id": 1, "annotations": [{"bbox": [0, 0, 5, 5], "bbox_mode": 1}]}], 1)


def test_few_shot_on_a_domain_covers_every_category(domain):
    records = DatasetCatalog.get(f"synthetic_{DOMAIN}_train")
    for seed in (0, 3, 30):
        kept = few_shot_subset(records, 1, seed)
        seen = {a["category_id"] for r in kept for a in r["annotations"]}
        assert seen == {a["category_id"] for r in records for a in r["annotations"]}


@pytest.mark.slow
def test_train_net_prompt_tuning_end_to_end(domain, base_file, tmp_path):
    """Prompt mode through train_net.py: the optimizer holds the offset only, the checkpoint is a small task file,
    --eval-only loads base + task and gives the training's AP, and the predictor runs the task's own prompt."""
    out = tmp_path / "prompt"
    args = ["--config-file", TINY, "OUTPUT_DIR", out, "MODEL.WEIGHTS", base_file, "MODEL.LANGUAGE.PRETRAINED", "True",
            "DATASETS.SYNTHETIC.ROOT", domain[: -len("_domains")], "DATASETS.TRAIN", f"('synthetic_{DOMAIN}_train',)",
            "DATASETS.TEST", f"('synthetic_{DOMAIN}_val',)", "INPUT.PROMPT.SHUFFLE", "False",
            "SOLVER.TUNING_MODE", "language_prompt_v2", "SOLVER.BASE_LR", "0.05", "SOLVER.WEIGHT_DECAY", "0.25",
            "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
            "MODEL.ATSS.INFERENCE_TH", "0.0"]  # random base weights: keep low scores so AP is a number
    log = run_train_net(args, log_path=tmp_path / "train.log")
    assert "Tuning mode 'prompt': 1 tensors, 384,000 of" in log
    task = str(out / "model_final.pth")
    info, weights, _ = read_task_file(task)
    assert set(weights) == {"prompt_offset.weight"} and info.tuning_mode == "prompt"
    assert info.base_weights == base_file and info.base_sha256 == _sha(base_file)
    assert info.thing_classes == DOMAINS[DOMAIN].thing_classes
    assert torch.count_nonzero(weights["prompt_offset.weight"]) > 0  # it trained
    # the offset (1000 x 384 fp32 = 1.5 MB) and its two AdamW moments for --resume; the whole model is ~150 MB
    assert os.path.getsize(task) < 3.2 * weights["prompt_offset.weight"].numel() * 4

    trained_ap = copypaste_results(log)
    eval_log = run_train_net(["--eval-only"] + args + ["MODEL.WEIGHTS", task], log_path=tmp_path / "eval.log")
    evaluated = copypaste_results(eval_log)
    assert trained_ap["AP"] > 0 and set(evaluated) == set(trained_ap)
    assert all(evaluated[k] == trained_ap[k] or (math.isnan(evaluated[k]) and math.isnan(trained_ap[k]))
               for k in trained_ap), (evaluated, trained_ap)  # APl is nan: no large objects

    cfg = _cfg(**{"MODEL.WEIGHTS": task, "MODEL.ATSS.INFERENCE_TH": 0.0})
    predictor = GLIPPredictor(cfg)
    assert predictor.tasks.active == f"synthetic_{DOMAIN}_train"
    image = cv2.imread(DatasetCatalog.get(f"synthetic_{DOMAIN}_val")[0]["file_name"])
    found = predictor(image)
    assert len(found) > 0 and set(found.pred_phrases) <= set(DOMAINS[DOMAIN].thing_classes)
    predictor.set_task(None)
    with pytest.raises(ValueError, match="no prompt given"):
        predictor(image)

    # the demo needs no --prompt with a task file: the task's vocabulary is drawn
    sys.path.insert(0, os.path.join(REPO, "demo"))
    import demo as demo_cli

    written = demo_cli.main(["--input", DatasetCatalog.get(f"synthetic_{DOMAIN}_val")[0]["file_name"], "--config-file",
                             TINY, "--weights", task, "--output", str(tmp_path / "demo.png"), "--confidence-threshold",
                             "0.0", "--opts", "MODEL.LANGUAGE.PRETRAINED", "True", "MODEL.ATSS.INFERENCE_TH", "0.0"])
    assert written == [str(tmp_path / "demo.png")] and cv2.imread(written[0]) is not None
    with pytest.raises(SystemExit, match="give either --prompt"):
        demo_cli.main(["--input", written[0], "--config-file", TINY, "--weights", base_file])


def test_trainer_builds_the_k_shot_epoch_schedule_and_optimizes_the_offset_only(domain, base_file, tmp_path):
    from glip_d2.engine.trainer import GLIPTrainer

    cfg = _cfg("prompt", **{"DATASETS.FEW_SHOT": 1, "DATASETS.SHUFFLE_SEED": 3, "DATASETS.GENERAL_COPY": 2,
                            "SOLVER.MAX_EPOCH": 3, "SOLVER.STEPS": (0.5,), "SOLVER.WARMUP_ITERS": 0,
                            "MODEL.WEIGHTS": base_file, "DATASETS.SYNTHETIC.ROOT": domain[: -len("_domains")],
                            "OUTPUT_DIR": str(tmp_path)})
    subset = few_shot_subset(DatasetCatalog.get(f"synthetic_{DOMAIN}_train"), 1, 3)
    trainer = GLIPTrainer(cfg)
    assert trainer.max_iter == 3 * (2 * len(subset)) // cfg.SOLVER.IMS_PER_BATCH
    names = [n for g in trainer.optimizer.param_groups for n in g["param_names"]]
    assert names == ["prompt_offset.weight"]
    assert trainer.checkpointer.task_info.tuning_mode == "prompt"
    assert trainer.checkpointer.task_info.base_sha256 == _sha(base_file)
