"""Optimizer groups, LR schedule, gradient clipping, EMA and the training step, on small hand-checkable models."""
import bisect
import copy
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage
from torch import nn

from glip_d2 import add_glip_config
from glip_d2.engine import (
    EMAHook,
    GLIPTrainStep,
    ModelEMA,
    build_glip_lr_scheduler,
    build_glip_optimizer,
    build_gradient_clipper,
    get_glip_param_groups,
)
from glip_d2.engine.optimizer import resolve_solver_steps
from glip_d2.engine.trainer import amp_dtype_from_cfg


class _GLIPNamed(nn.Module):
    """Parameters named like the real model's (language encoder, tower BERT layer, head biases, Swin table)."""

    def __init__(self):
        super().__init__()
        self.language_encoder = nn.Module()
        self.language_encoder.model = nn.Linear(3, 3)  # weight -> LANG_LR, bias -> 2 * LANG_LR, wd 0
        self.vl_tower = nn.Module()
        self.vl_tower.lang_layer = nn.Linear(3, 3)  # extra BERT layer: BASE_LR
        self.backbone = nn.Module()
        self.backbone.norm = nn.LayerNorm(3)  # norm weight keeps weight decay (official norm factor 1)
        self.backbone.relative_position_bias_table = nn.Parameter(torch.zeros(4))  # "bias" substring
        self.head = nn.Module()
        self.head.bias_lang = nn.Parameter(torch.zeros(3))
        self.head.bias0 = nn.Parameter(torch.zeros(1))
        self.head.log_scale = nn.Parameter(torch.zeros(1))
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)


def _cfg(**solver):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.LANG_LR = 1e-5
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def _lr_wd_by_name(optimizer):
    return {n: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for n in g["param_names"]}


def test_param_groups_follow_official_name_rules():
    model = _GLIPNamed()
    opt = build_glip_optimizer(_cfg(), model)
    assert isinstance(opt, torch.optim.AdamW)
    got = _lr_wd_by_name(opt)
    expected = {
        "language_encoder.model.weight": (1e-5, 1e-4),
        "language_encoder.model.bias": (2e-5, 0.0),
        "vl_tower.lang_layer.weight": (1e-4, 1e-4),
        "vl_tower.lang_layer.bias": (2e-4, 0.0),
        "backbone.norm.weight": (1e-4, 1e-4),
        "backbone.norm.bias": (2e-4, 0.0),
        "backbone.relative_position_bias_table": (2e-4, 0.0),
        "head.bias_lang": (2e-4, 0.0),
        "head.bias0": (2e-4, 0.0),
        "head.log_scale": (1e-4, 1e-4),
    }
    assert set(got) == set(expected)  # the frozen parameter is left out
    for name, (lr, wd) in expected.items():
        assert got[name][0] == pytest.approx(lr) and got[name][1] == pytest.approx(wd), name
    # one group per distinct (lr, wd); all trainable parameters exactly once
    assert len(opt.param_groups) == 4
    assert sum(len(g["params"]) for g in opt.param_groups) == 10


def test_adamw_update_matches_plain_torch_adamw():
    torch.manual_seed(0)
    model = _GLIPNamed()
    reference = copy.deepcopy(model)
    opt = build_glip_optimizer(_cfg(), model)  # fused kernel when available
    ref_opt = torch.optim.AdamW(
        [{"params": [dict(reference.named_parameters())[n] for n in g["param_names"]], "lr": g["lr"],
          "weight_decay": g["weight_decay"]} for g in opt.param_groups], lr=1e-4)
    for step in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            loss = sum(((p - 0.1 * step) ** 2).sum() for p in m.parameters() if p.requires_grad)
            loss.backward()
            o.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-7), name


def test_param_groups_under_ddp_prefix_and_d2_none_bias_decay():
    wrapped = nn.Module()
    wrapped.module = _GLIPNamed()
    groups = get_glip_param_groups(
        wrapped, base_lr=1.0, lang_lr=0.5, weight_decay=0.1, bias_lr_factor=3.0, weight_decay_bias=None
    )
    by_name = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    assert by_name["module.language_encoder.model.bias"] == (1.5, 0.1)  # None = follow WEIGHT_DECAY
    assert by_name["module.head.bias0"] == (3.0, 0.1)


def test_backbone_body_lr_factor_scales_only_the_vision_body():
    model = _GLIPNamed()
    model.backbone.bottom_up = nn.Linear(3, 3)  # vision body (official backbone.body)
    model.backbone.fpn_lateral3 = nn.Linear(3, 3)  # FPN: BASE_LR
    got = _lr_wd_by_name(build_glip_optimizer(_cfg(BACKBONE_BODY_LR_FACTOR=5.0), model))
    assert got["backbone.bottom_up.weight"] == pytest.approx((5e-4, 1e-4))
    assert got["backbone.bottom_up.bias"] == pytest.approx((1e-3, 0.0))  # then x BIAS_LR_FACTOR, as officially
    assert got["backbone.fpn_lateral3.weight"] == pytest.approx((1e-4, 1e-4))
    assert got["language_encoder.model.weight"] == pytest.approx((1e-5, 1e-4))
    assert got["vl_tower.lang_layer.weight"] == pytest.approx((1e-4, 1e-4))


def test_sgd_and_bad_optimizer_name():
    opt = build_glip_optimizer(_cfg(OPTIMIZER="SGD", MOMENTUM=0.9), _GLIPNamed())
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_glip_optimizer(_cfg(OPTIMIZER="LAMB"), _GLIPNamed())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_glip_optimizer(_cfg(), frozen)


def _official_lr(it, base_lr, steps, gamma, warmup_factor, warmup_iters):
    """microsoft/GLIP WarmupMultiStepLR (linear warmup), written out independently."""
    factor = 1.0
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    return base_lr * factor * gamma ** bisect.bisect_right(steps, it)


def test_fractional_steps_resolve_like_official():
    assert resolve_solver_steps((0.67, 0.89), 300) == [201, 267]
    assert resolve_solver_steps((200, 260), 300) == [200, 260]
    with pytest.raises(ValueError, match="increasing"):
        resolve_solver_steps((0.9, 0.5), 100)


def test_lr_schedule_matches_official_warmup_multistep():
    cfg = _cfg(MAX_ITER=100, STEPS=(0.67, 0.89), GAMMA=0.1, WARMUP_ITERS=20, WARMUP_FACTOR=0.001)
    model = _GLIPNamed()
    opt = build_glip_optimizer(cfg, model)
    sched = build_glip_lr_scheduler(cfg, opt)
    base = [g["initial_lr"] for g in opt.param_groups]
    for it in range(100):
        for g, b in zip(opt.param_groups, base):
            want = _official_lr(it, b, [67, 89], 0.1, 0.001, 20)
            assert g["lr"] == pytest.approx(want, rel=1e-6, abs=1e-14), (it, b)
        opt.step()
        sched.step()


def test_full_model_clipping_uses_one_global_norm():
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    clip = build_gradient_clipper(cfg)
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip([a, b])
    assert float(norm) == pytest.approx(5.0)
    # every gradient scaled by the same 1/5 (per-parameter clipping would give [1, 0] and [1])
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.0]), atol=1e-6)
    assert torch.allclose(b.grad, torch.tensor([0.8]), atol=1e-6)

    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    build_gradient_clipper(cfg)([a, b])
    assert torch.allclose(a.grad, torch.tensor([1.0, 0.0]), atol=1e-6) and torch.allclose(b.grad, torch.ones(1))

    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "bogus"
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        build_gradient_clipper(cfg)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    assert build_gradient_clipper(cfg) is None


def test_ema_update_closed_form_and_integer_buffers():
    model = nn.Linear(1, 1, bias=False)
    model.register_buffer("index", torch.tensor([168]))
    nn.init.constant_(model.weight, 1.0)
    ema = ModelEMA(model, decay=0.9)
    values = [2.0, 4.0, 8.0]
    expected = 1.0
    for v in values:
        nn.init.constant_(model.weight, v)
        model.index.fill_(169)
        ema.update(model)
        expected = 0.9 * expected + 0.1 * v
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.module.index.item() == 169 and ema.module.index.dtype == torch.long
    assert not ema.module.weight.requires_grad and not ema.module.training
    # state-dict round trip (the "model_ema" checkpoint entry), with a DDP-style prefix tolerated
    fresh = nn.Linear(1, 1, bias=False)
    fresh.register_buffer("index", torch.tensor([0]))
    other = ModelEMA(fresh, 0.9)
    other.load_state_dict({"module." + k: v for k, v in ema.state_dict().items()})
    assert other.module.weight.item() == pytest.approx(expected) and other.num_loads == 1
    with pytest.raises(RuntimeError):
        other.load_state_dict({"weight": torch.zeros(1, 1)})  # missing 'index': strict
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, 1.0)


class _Regressor(nn.Module):
    """y = w·x + b with an MSE loss; records the autocast state seen in forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.seen_autocast = []

    def forward(self, batch):
        x, y = batch
        self.seen_autocast.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        )
        pred = self.lin(x).float()
        return {"loss_mse": ((pred - y) ** 2).mean(), "loss_l1": (pred - y).abs().mean()}


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def _run_steps(step_trainer, n, hooks=()):
    with EventStorage(0) as storage:
        for i in range(n):
            step_trainer.iter = i
            step_trainer.storage = storage
            step_trainer.run_step()
            for h in hooks:
                h.after_step()
            storage.step()
    return storage


def test_train_step_matches_manual_loop_with_clipping_and_ema():
    torch.manual_seed(0)
    model = _Regressor()
    reference = copy.deepcopy(model)
    data = _batches(5)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clip_cfg = _cfg()
    clip_cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    clip_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    clip_cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    step = GLIPTrainStep(model, iter(data), opt, grad_clipper=build_gradient_clipper(clip_cfg))
    ema = ModelEMA(model, 0.5)
    hook = EMAHook(ema)
    hook.trainer = step
    storage = _run_steps(step, 5, hooks=[hook])

    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    ref_ema = {k: v.clone() for k, v in reference.lin.state_dict().items()}
    norms = []
    for x, y in data:
        pred = reference.lin(x)
        loss = ((pred - y) ** 2).mean() + (pred - y).abs().mean()
        ref_opt.zero_grad()
        loss.backward()
        total = math.sqrt(sum(float((p.grad**2).sum()) for p in reference.parameters()))
        norms.append(total)
        scale = min(1.0, 0.5 / (total + 1e-6))
        for p in reference.parameters():
            p.grad.mul_(scale)
        ref_opt.step()
        for k, v in reference.lin.state_dict().items():
            ref_ema[k] = 0.5 * ref_ema[k] + 0.5 * v
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    for k, v in ema.module.lin.state_dict().items():
        assert torch.allclose(v, ref_ema[k], atol=1e-6)
    logged = [v for v, _ in storage.history("grad_norm").values()]
    assert logged == pytest.approx(norms, rel=1e-5)
    assert "loss_mse" in storage.histories() and "total_loss" in storage.histories()


def test_train_step_autocast_bf16_on_cpu():
    cfg = _cfg()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = "bfloat16"
    dtype = amp_dtype_from_cfg(cfg)
    assert dtype == torch.bfloat16
    model = _Regressor()
    before = model.lin.weight.detach().clone()
    step = GLIPTrainStep(model, iter(_batches(2)), torch.optim.SGD(model.parameters(), lr=0.1), amp_dtype=dtype)
    assert step.grad_scaler is None  # bf16 needs no loss scaling
    _run_steps(step, 2)
    assert model.seen_autocast == [torch.bfloat16, torch.bfloat16]
    assert not torch.equal(before, model.lin.weight)

    cfg.SOLVER.AMP.DTYPE = "float8"
    with pytest.raises(ValueError, match="AMP.DTYPE"):
        amp_dtype_from_cfg(cfg)
    cfg.SOLVER.AMP.ENABLED = False
    assert amp_dtype_from_cfg(cfg) is None


def test_train_step_fp16_scaler_state_round_trip():
    model = _Regressor()
    step = GLIPTrainStep(model, iter(_batches(2)), torch.optim.SGD(model.parameters(), lr=0.1), amp_dtype=torch.float16)
    assert step.grad_scaler is not None
    _run_steps(step, 1)
    state = step.state_dict()
    assert "grad_scaler" in state and "optimizer" in state
    fresh = GLIPTrainStep(model, iter(_batches(1)), torch.optim.SGD(model.parameters(), lr=0.1), amp_dtype=torch.float16)
    fresh.load_state_dict(state)
    assert fresh.grad_scaler.get_scale() == step.grad_scaler.get_scale()


def _toy_eval_trainer():
    from glip_d2.engine import GLIPTrainer

    class ToyTrainer(GLIPTrainer):
        @classmethod
        def build_model(cls, cfg):
            torch.manual_seed(0)
            return nn.Linear(2, 2)

    return ToyTrainer


def test_eval_model_loads_ema_weights_when_ema_eval(tmp_path):
    from glip_d2.checkpoint import GLIPCheckpointer

    trained = nn.Linear(2, 2)
    nn.init.constant_(trained.weight, 1.0)
    ema = ModelEMA(trained, 0.5)
    nn.init.constant_(ema.module.weight, 3.0)
    GLIPCheckpointer(trained, str(tmp_path), model_ema=ema).save("model_final")
    path = str(tmp_path / "model_final.pth")

    cfg = _cfg(EMA_DECAY=0.5, EMA_EVAL=True)
    cfg.MODEL.WEIGHTS = path
    cfg.OUTPUT_DIR = str(tmp_path / "eval")
    trainer_cls = _toy_eval_trainer()
    model = trainer_cls.build_model_for_eval(cfg)
    assert torch.all(model.weight == 3.0) and not model.training

    cfg.SOLVER.EMA_EVAL = False  # raw weights
    assert torch.all(trainer_cls.build_model_for_eval(cfg).weight == 1.0)
    cfg.SOLVER.EMA_EVAL, cfg.SOLVER.EMA_DECAY = True, 0.0  # EMA off in the config: raw weights
    assert torch.all(trainer_cls.build_model_for_eval(cfg).weight == 1.0)

    # --resume picks OUTPUT_DIR's last checkpoint over MODEL.WEIGHTS
    nn.init.constant_(trained.weight, 5.0)
    GLIPCheckpointer(trained, cfg.OUTPUT_DIR).save("model_0000009")
    assert torch.all(trainer_cls.build_model_for_eval(cfg, resume=True).weight == 5.0)
