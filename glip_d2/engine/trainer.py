"""GLIP training: one training step (AMP, full-model clipping) and the ``DefaultTrainer`` that wires it up.

What differs from detectron2's ``DefaultTrainer`` and why:
* grounding mapper for train and test loaders (captions, token positive maps);
* the official optimizer groups / AdamW / fractional LR steps (:mod:`.optimizer`);
* AMP in fp16 or bf16 (``SOLVER.AMP.DTYPE``) through ``torch.autocast`` on the model's device, with a gradient
  scaler for fp16 only; gradients are un-scaled before clipping so the clip sees true norms, as official;
* optional EMA of weights (``SOLVER.EMA_DECAY``) saved as ``model_ema`` and used for evaluation when
  ``SOLVER.EMA_EVAL``;
* DDP with ``device_ids=None`` on CPU so gloo multi-process training works (detectron2 v0.6 passes a GPU id);
* ``GLIPCheckpointer`` (atomic saves, official/zoo weights) instead of ``DetectionCheckpointer``;
* transfer (README "Transfer"): ``SOLVER.TUNING_MODE`` decides what trains (task checkpoints hold only that),
  ``DATASETS.FEW_SHOT`` / ``SHUFFLE_SEED`` / ``GENERAL_COPY`` build the training set, ``SOLVER.MAX_EPOCH`` the
  schedule;
* ``DATASETS.TRAIN_SAMPLING_RATIOS`` draws each training set at its share of the samples (detectron2's
  ``RepeatFactorTrainingSampler``, factors from :mod:`glip_d2.data.sampling_ratios`);
* ``test`` encodes each prompt's text once per evaluation (:mod:`glip_d2.modeling.text_cache`).
"""
import contextlib
import logging
import os
import time
import weakref

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.nn.parallel import DistributedDataParallel

from .config_validation import validate_training_config
from .ema import ModelEMA, unwrap_model
from .hooks import EMAHook
from .optimizer import (
    build_glip_lr_scheduler,
    build_glip_optimizer,
    build_gradient_clipper,
)
from .transfer import task_info_from_cfg, with_epoch_schedule

__all__ = ["GLIPTrainStep", "GLIPTrainer", "amp_dtype_from_cfg", "create_ddp_model"]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def amp_dtype_from_cfg(cfg) -> torch.dtype | None:
    """The autocast dtype, or None when ``SOLVER.AMP.ENABLED`` is False."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    name = str(cfg.SOLVER.AMP.DTYPE).lower()
    if name not in _AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE must be 'float16' or 'bfloat16', got {cfg.SOLVER.AMP.DTYPE!r}")
    return _AMP_DTYPES[name]


def create_ddp_model(model: torch.nn.Module, *, find_unused_parameters: bool = False) -> torch.nn.Module:
    """Wrap in DDP when more than one process runs; ``device_ids`` only for CUDA models (gloo on CPU)."""
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    device_ids = [device.index if device.index is not None else comm.get_local_rank()] if device.type == "cuda" else None
    logger.info(
        "DistributedDataParallel over %d processes (%s)", comm.get_world_size(), torch.distributed.get_backend()
    )
    return DistributedDataParallel(
        model, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=find_unused_parameters
    )


class GLIPTrainStep(SimpleTrainer):
    """One iteration: forward (under autocast when AMP is on), backward, optional clipping, optimizer step.

    The gradient norm returned by a full-model clipper is logged as ``grad_norm``.
    """

    def __init__(self, model, data_loader, optimizer, *, amp_dtype: torch.dtype | None = None, grad_clipper=None):
        super().__init__(model, data_loader, optimizer)
        self.amp_dtype = amp_dtype
        self.grad_clipper = grad_clipper
        self.device_type = next(unwrap_model(model).parameters()).device.type
        self.grad_scaler = (
            torch.amp.GradScaler(self.device_type) if amp_dtype == torch.float16 else None
        )

    def run_step(self):
        assert self.model.training, "[GLIPTrainStep] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(
            device_type=self.device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()

        self._write_metrics(loss_dict, data_time)

        if self.grad_clipper is not None:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = self.grad_clipper(params)
            if norm is not None:
                get_event_storage().put_scalar("grad_norm", float(norm))

        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _checkpointer_class():
    from ..checkpoint import GLIPCheckpointer

    return GLIPCheckpointer


class _CapturedState:
    """A checkpointable that only keeps the state dict it is given (reads ``model_ema`` without a model copy)."""

    def __init__(self):
        self.state = None

    def state_dict(self):
        return self.state or {}

    def load_state_dict(self, state):
        self.state = state


class GLIPTrainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with GLIP's data, optimizer, AMP, clipping, EMA and checkpointer."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        validate_training_config(cfg)  # schedule and OUTPUT_DIR, before anything is built

        if cfg.SOLVER.MAX_EPOCH > 0:  # the schedule in iterations needs the training set's size
            cfg = with_epoch_schedule(cfg, len(self.build_train_records(cfg)))
        data_loader = self.build_train_loader(cfg)  # first: it validates the data before the model is built
        model = self.build_model(cfg)
        if cfg.SOLVER.TUNING_MODE:
            model.set_tuning_mode(cfg.SOLVER.TUNING_MODE)  # before the optimizer: it takes the trainable ones only
        optimizer = self.build_optimizer(cfg, model)
        self.ema = ModelEMA(model, cfg.SOLVER.EMA_DECAY) if cfg.SOLVER.EMA_DECAY > 0 else None

        model = create_ddp_model(model, find_unused_parameters=cfg.SOLVER.FIND_UNUSED_PARAMETERS)
        self._trainer = GLIPTrainStep(
            model,
            data_loader,
            optimizer,
            amp_dtype=amp_dtype_from_cfg(cfg),
            grad_clipper=build_gradient_clipper(cfg),
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        extra = {"model_ema": self.ema} if self.ema is not None else {}
        self.checkpointer = _checkpointer_class()(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), task_info=task_info_from_cfg(cfg),
            task_base_weights=cfg.MODEL.TASK_BASE_WEIGHTS, **extra,
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """Resume from OUTPUT_DIR's last checkpoint (all states, EMA included) or load MODEL.WEIGHTS.

        A fresh or fine-tuning run starts the EMA from the loaded weights, not from the random init.
        """
        ema_loads_before = self.ema.num_loads if self.ema is not None else 0
        super().resume_or_load(resume=resume)
        if self.ema is not None and self.ema.num_loads == ema_loads_before:
            self.ema.copy_from(self.model)

    def state_dict(self):
        # detectron2 v0.6's DefaultTrainer saves only the iteration and hook states; the optimizer (AdamW moments)
        # and the AMP scaler must be in the checkpoint too, or --resume restarts them from zero.
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def build_hooks(self):
        cfg = self.cfg
        ret = [hooks.IterationTimer()]
        if self.ema is not None:
            ret.append(EMAHook(self.ema))  # before checkpointing/eval so both see this step's average
        ret.append(hooks.LRScheduler())
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.eval_model())
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def eval_model(self) -> torch.nn.Module:
        """The weights evaluated during training: the EMA copy when EMA and ``SOLVER.EMA_EVAL`` are on."""
        if self.ema is not None and self.cfg.SOLVER.EMA_EVAL:
            return self.ema.module
        return self.model

    @classmethod
    def build_model(cls, cfg):
        """detectron2's ``build_model``, with the text encoder's pretrained weights fetched only when the weights
        loaded next (``MODEL.WEIGHTS``) do not provide it (:func:`~glip_d2.checkpoint.resolve_text_pretrained`)."""
        from ..checkpoint.weights_content import resolve_text_pretrained

        if cfg.MODEL.META_ARCHITECTURE == "GLIPv2VQA" and cfg.MODEL.VQA.NUM_ANSWERS <= 0:
            from .vqa_predictor import answer_vocab_from_cfg

            answer_vocab_from_cfg(cfg)  # registers the answer vocabulary that sizes the head (--eval-only too)
        return super().build_model(resolve_text_pretrained(cfg))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_glip_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_glip_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_records(cls, cfg) -> list[dict]:
        """The training dicts: validated (``DATASETS.ON_INVALID``), K-shot sampled per dataset when
        ``DATASETS.FEW_SHOT`` is set, repeated ``DATASETS.GENERAL_COPY`` times. With
        ``DATASETS.TRAIN_SAMPLING_RATIOS``, each dataset's records in turn (the loader's sampler weighs them)."""
        from ..data.datasets import register_datasets_from_cfg
        from ..data.few_shot import repeat_records
        from ..data.validation import validated_dataset_dicts_from_cfg

        register_datasets_from_cfg(cfg)  # synthetic set (generated on first use), DATASETS.REGISTER_COCO / _PSEUDO
        if cfg.DATASETS.TRAIN_SAMPLING_RATIOS:
            return [r for _, records in cls._ratio_train_records(cfg)[0] for r in records]
        if cfg.INPUT.PROMPT.TRAIN_SOURCE_BY_DATASET or cfg.DATASETS.FEW_SHOT:  # per dataset
            dataset = [r for _, records in cls.build_train_records_by_dataset(cfg) for r in records]
        else:
            dataset = validated_dataset_dicts_from_cfg(cfg, cfg.DATASETS.TRAIN, is_train=True)
        return repeat_records(dataset, int(cfg.DATASETS.GENERAL_COPY))

    @classmethod
    def build_train_records_by_dataset(cls, cfg) -> list[tuple[str, list[dict]]]:
        """``(name, dicts)`` per ``DATASETS.TRAIN`` name: validated, K-shot sampled (``DATASETS.FEW_SHOT``), tagged
        with the name when ``INPUT.PROMPT.TRAIN_SOURCE_BY_DATASET``; not yet repeated ``GENERAL_COPY`` times."""
        from ..data.datasets import register_datasets_from_cfg
        from ..data.few_shot import few_shot_subset
        from ..data.mapper import tag_records
        from ..data.validation import validated_dataset_dicts_from_cfg

        register_datasets_from_cfg(cfg)
        ret = []
        for name in cfg.DATASETS.TRAIN:
            records = validated_dataset_dicts_from_cfg(cfg, [name], is_train=True)
            records = few_shot_subset(records, int(cfg.DATASETS.FEW_SHOT), int(cfg.DATASETS.SHUFFLE_SEED))
            # per-dataset prompt sources: each record names its dataset
            ret.append((name, tag_records(records, name) if cfg.INPUT.PROMPT.TRAIN_SOURCE_BY_DATASET else records))
        return ret

    @classmethod
    def _ratio_train_records(cls, cfg) -> tuple[list[tuple[str, list[dict]]], list[float]]:
        """Per-dataset records (``GENERAL_COPY`` applied to each) and their normalised sampling ratios, the ratios
        checked before any data is loaded."""
        from ..data.few_shot import repeat_records
        from ..data.sampling_ratios import sampling_ratios_from_cfg

        ratios = sampling_ratios_from_cfg(cfg)
        copies = int(cfg.DATASETS.GENERAL_COPY)
        return [(n, repeat_records(r, copies)) for n, r in cls.build_train_records_by_dataset(cfg)], ratios

    @classmethod
    def build_train_loader(cls, cfg):
        from ..data.datasets import register_datasets_from_cfg
        from ..data.mapper import GroundingDatasetMapper
        from ..data.sampling_ratios import build_ratio_sampler
        from .caption_data import build_caption_train_loader, is_caption_data
        from .vqa_data import build_vqa_train_loader, is_vqa_data

        register_datasets_from_cfg(cfg)
        names = cfg.DATASETS.TRAIN
        if cfg.DATASETS.TRAIN_SAMPLING_RATIOS and (is_vqa_data(names) or is_caption_data(names)):
            raise ValueError(f"DATASETS.TRAIN_SAMPLING_RATIOS mixes grounding / detection sets only, not the VQA or "
                             f"captioning sets {list(names)}; leave it empty for them")
        if is_vqa_data(cfg.DATASETS.TRAIN):  # questions + soft answers (GLIPv2VQA): VQADatasetMapper, no box checks
            return build_vqa_train_loader(cfg)
        if is_caption_data(cfg.DATASETS.TRAIN):  # images + reference captions (GLIPv2Caption): CaptionDatasetMapper
            return build_caption_train_loader(cfg)
        if cfg.DATASETS.TRAIN_SAMPLING_RATIOS:  # each dataset drawn at its share of the samples
            dataset, sampler = build_ratio_sampler(*cls._ratio_train_records(cfg))
            return build_detection_train_loader(
                cfg, mapper=GroundingDatasetMapper(cfg, is_train=True), dataset=dataset, sampler=sampler
            )
        dataset = cls.build_train_records(cfg)
        return build_detection_train_loader(cfg, mapper=GroundingDatasetMapper(cfg, is_train=True), dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        from ..data.datasets import register_datasets_from_cfg
        from ..data.mapper import GroundingDatasetMapper
        from ..data.validation import validated_dataset_dicts_from_cfg
        from .caption_data import build_caption_test_loader, is_caption_data
        from .vqa_data import build_vqa_test_loader, is_vqa_data

        register_datasets_from_cfg(cfg)
        if is_vqa_data([dataset_name]):  # evaluated by VQAEvaluator (evaluation/build.py)
            return build_vqa_test_loader(cfg, dataset_name)
        if is_caption_data([dataset_name]):  # evaluated by CaptionEvaluator (evaluation/build.py)
            return build_caption_test_loader(cfg, dataset_name)
        return build_detection_test_loader(
            validated_dataset_dicts_from_cfg(cfg, [dataset_name], is_train=False),
            mapper=GroundingDatasetMapper(cfg, is_train=False, dataset_name=dataset_name),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, with each prompt's text features computed once per dataset pass (the same
        prompts come with every image; ``modeling.text_cache``)."""
        cache = getattr(unwrap_model(model), "text_cache", None)
        with cache.enabled() if cache is not None else contextlib.nullcontext():
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import build_evaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_model_for_eval(cls, cfg, *, resume: bool = False) -> torch.nn.Module:
        """Model with the weights ``--eval-only`` evaluates, in eval mode.

        Weights: OUTPUT_DIR's last checkpoint when resuming and one exists, else MODEL.WEIGHTS. With EMA and
        ``SOLVER.EMA_EVAL`` on, a checkpoint's ``model_ema`` replaces its ``model``, so the AP equals the one printed
        at the end of training. Official checkpoints have a ``model_ema`` in official names; the checkpointer
        returns only their converted ``model`` (the reference says to use it, official detail 17).
        """
        path = cfg.MODEL.WEIGHTS
        if resume:
            last = _checkpointer_class()(torch.nn.Module(), save_dir=cfg.OUTPUT_DIR)
            if last.has_checkpoint():
                path = last.get_checkpoint_file()
        if path != cfg.MODEL.WEIGHTS:  # build for the weights actually loaded (they decide the text encoder's)
            frozen, cfg = cfg.is_frozen(), cfg.clone()
            cfg.defrost()
            cfg.MODEL.WEIGHTS = path
            if frozen:
                cfg.freeze()
        model = cls.build_model(cfg)
        use_ema = cfg.SOLVER.EMA_DECAY > 0 and cfg.SOLVER.EMA_EVAL
        captured = _CapturedState()
        checkpointer = _checkpointer_class()(
            model, save_dir=cfg.OUTPUT_DIR, task_base_weights=cfg.MODEL.TASK_BASE_WEIGHTS,
            **({"model_ema": captured} if use_ema else {}),
        )
        if not path:
            logger.warning("No MODEL.WEIGHTS and no checkpoint to resume: evaluating randomly initialised weights.")
        checkpointer.load(path, checkpointables=["model_ema"] if use_ema else [])
        if captured.state:
            state = dict(captured.state)
            consume_prefix_in_state_dict_if_present(state, "module.")
            model.load_state_dict(state, strict=True)
            logger.info("Evaluating the EMA weights ('model_ema') of %s.", path)
        model.eval()
        return model
