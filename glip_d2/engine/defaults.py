"""Config + process setup shared by ``train_net.py``, the demo and the predictor (detectron2's ``default_setup``)."""
import logging
import os

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_glip_config
from .config_validation import check_output_dir, validate_training_config

__all__ = ["default_glip_setup", "get_glip_cfg", "load_glip_cfg", "load_cli_cfg"]

logger = logging.getLogger(__name__)


def get_glip_cfg() -> CfgNode:
    """detectron2's default config with glip_d2's keys added."""
    return add_glip_config(get_cfg())


def load_glip_cfg(config_file: str = "", opts: list[str] | None = None, *, freeze: bool = True) -> CfgNode:
    """Config from a YAML file plus ``KEY VALUE`` overrides.

    ``MODEL.DEVICE`` "cuda" falls back to "cpu" (with a warning) on a machine without CUDA, so the same config
    and command run on a laptop and on a GPU server.
    """
    cfg = get_glip_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        if len(opts) % 2:
            raise ValueError(f"Config overrides must be KEY VALUE pairs, got an odd number: {opts}")
        cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using cpu.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg


def load_cli_cfg(config_file: str, weights: str, opts: list[str], *, freeze: bool = True) -> CfgNode:
    """The config of a command line with ``--config-file`` / ``--weights`` (a file or a model-zoo name, whose config
    is the default) / ``KEY VALUE`` overrides; a clear ``SystemExit`` for a name that is neither."""
    if weights and not os.path.exists(weights):
        from ..model_zoo import get_config_file, get_entry, get_weights_url

        try:
            entry = get_entry(weights)
        except KeyError as e:
            raise SystemExit(f"--weights {weights!r} is neither a file nor a model-zoo name: {e.args[0]}") from None
        config_file = config_file or get_config_file(entry.name)
        weights = get_weights_url(entry.name)
    if not config_file:
        raise SystemExit("give --config-file, or a model-zoo name as --weights")
    opts = [o for o in opts if o != "--"] + (["MODEL.WEIGHTS", weights] if weights else [])
    return load_glip_cfg(config_file, opts, freeze=freeze)


def _collect_env_info_tolerant() -> str:
    # detectron2 v0.6's collect_env_info() asks detectron2._C for its compiler version; built without the C++
    # ops (our default install) that call raises, and default_setup() would stop before saving config.yaml.
    from detectron2.utils.collect_env import collect_env_info

    try:
        return collect_env_info()
    except RuntimeError as e:
        return f"(detectron2 environment summary unavailable: {e})"


def default_glip_setup(cfg: CfgNode, args) -> None:
    """detectron2's ``default_setup`` (loggers, config backup in OUTPUT_DIR, env info, seeding), plus glip_d2's logger.

    The training schedule and OUTPUT_DIR are checked first: ``default_setup`` writes into OUTPUT_DIR.
    """
    if getattr(args, "eval_only", False):
        check_output_dir(cfg.OUTPUT_DIR)
    else:
        validate_training_config(cfg)
    original = d2_defaults.collect_env_info
    d2_defaults.collect_env_info = _collect_env_info_tolerant
    try:
        default_setup(cfg, args)
    finally:
        d2_defaults.collect_env_info = original
    # glip_d2's own loggers (trainer, checkpointer, data) log beside detectron2's, to the same files
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="glip_d2")


def end_process_group() -> None:
    """Leave a distributed run cleanly: wait until every process is here, then tear the process group down.

    detectron2's ``launch`` does not do it; a gloo worker that exits while another still runs a collective (or with
    its process group alive) dies with "terminate called without an active exception" and fails the whole launch.
    A no-op in a one-process run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
