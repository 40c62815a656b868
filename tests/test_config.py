"""Config defaults must equal the official GLIP-T(C) values (model, anchors and losses, inference, prompts, solver)."""
import math

import pytest
from detectron2.config import get_cfg

from glip_d2 import add_glip_config


@pytest.fixture(scope="module")
def cfg():
    return add_glip_config(get_cfg())


REFERENCE_VALUES = {
    # language backbone
    "MODEL.LANGUAGE.MODEL_NAME": "bert-base-uncased",
    "MODEL.LANGUAGE.HIDDEN_DIM": 768,
    "MODEL.LANGUAGE.MAX_QUERY_LEN": 256,
    "MODEL.LANGUAGE.PAD_MAX": True,
    "MODEL.LANGUAGE.NUM_LAYERS": 1,
    "MODEL.LANGUAGE.FREEZE": False,
    "MODEL.LANGUAGE.MASK_SPECIAL": False,
    # fusion
    "MODEL.FUSION.TYPE": "MHA-B",
    "MODEL.FUSION.EMBED_DIM": 2048,
    "MODEL.FUSION.NUM_HEADS": 8,
    "MODEL.FUSION.DROPOUT": 0.1,
    "MODEL.FUSION.DROP_PATH": 0.0,
    "MODEL.FUSION.CLAMP_MIN_FOR_UNDERFLOW": True,
    "MODEL.FUSION.CLAMP_MAX_FOR_OVERFLOW": True,
    "MODEL.FUSION.STABLE_SOFTMAX_2D": False,
    "MODEL.FUSION.CLAMP_BERTATTN": True,
    # DyHead
    "MODEL.DYHEAD.CHANNELS": 256,
    "MODEL.DYHEAD.NUM_CONVS": 6,
    "MODEL.DYHEAD.GN_GROUPS": 16,
    "MODEL.DYHEAD.USE_GN": True,
    "MODEL.DYHEAD.USE_DYRELU": True,
    "MODEL.DYHEAD.USE_DFCONV": True,
    "MODEL.DYHEAD.USE_DYFUSE": True,
    "MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT": True,
    "MODEL.GLIP.LOG_SCALE_INIT": 0.0,
    "MODEL.GLIP.PRIOR_PROB": 0.01,
    "MODEL.GLIP.CLAMP_DOT_PRODUCT": True,
    "MODEL.GLIP.TOKEN_ALPHA": 0.25,
    "MODEL.GLIP.TOKEN_GAMMA": 2.0,
    # Swin-T
    "MODEL.SWIN.EMBED_DIM": 96,
    "MODEL.SWIN.DEPTHS": [2, 2, 6, 2],
    "MODEL.SWIN.NUM_HEADS": [3, 6, 12, 24],
    "MODEL.SWIN.WINDOW_SIZE": 7,
    "MODEL.SWIN.DROP_PATH_RATE": 0.2,
    "MODEL.SWIN.APE": False,
    "MODEL.SWIN.FREEZE_AT": -1,
    # FPN
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.FPN.DROP_BLOCK": True,
    "MODEL.FPN.DROP_BLOCK_PROB": 0.3,
    "MODEL.FPN.DROP_BLOCK_SIZE": 3,
    # anchors, coder, ATSS, losses
    "MODEL.ATSS.ANCHOR_SIZES": [64, 128, 256, 512, 1024],
    "MODEL.ATSS.ANCHOR_STRIDES": [8, 16, 32, 64, 128],
    "MODEL.ATSS.ASPECT_RATIOS": [1.0],
    "MODEL.ATSS.TOPK": 9,
    "MODEL.ATSS.BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    "MODEL.ATSS.REG_LOSS_WEIGHT": 2.0,
    # inference
    "MODEL.ATSS.INFERENCE_TH": 0.05,
    "MODEL.ATSS.PRE_NMS_TOP_N": 1000,
    "MODEL.ATSS.NMS_TH": 0.6,
    "MODEL.ATSS.DETECTIONS_PER_IMG": 100,
    # prompts
    "INPUT.PROMPT.SEPARATOR": ". ",
    "INPUT.PROMPT.DEMO_SEPARATOR": " . ",
    "INPUT.PROMPT.CHUNK_SIZE": 40,
    "INPUT.PROMPT.RANDOM_SAMPLE_NEG": 85,
    "INPUT.PROMPT.FULL_NEGATIVE_PROB": 0.5,
    "INPUT.RESIZE_TRUNCATE": True,
    "INPUT.FLIP_PROB_TRAIN": 0.5,
    # solver
    "SOLVER.OPTIMIZER": "ADAMW",
    "SOLVER.LANG_LR": 1e-5,
}


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("key,expected", sorted(REFERENCE_VALUES.items()))
def test_default_equals_reference(cfg, key, expected):
    value = _get(cfg, key)
    if isinstance(expected, float):
        assert math.isclose(value, expected), key
    else:
        assert list(value) == expected if isinstance(expected, list) else value == expected, key


def test_add_twice_is_harmless():
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.DYHEAD.NUM_CONVS = 8
    add_glip_config(cfg)
    assert cfg.MODEL.DYHEAD.NUM_CONVS == 8


def test_every_glip_key_has_a_comment():
    """The config file is the reference for users: each key assignment is preceded by a comment line."""
    import inspect

    import glip_d2.config as config_module

    lines = inspect.getsource(config_module).splitlines()
    missing = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("_C.") and "= CN()" not in stripped and "=" in stripped:
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("_C.") and "= CN()" not in lines[j]:
                j -= 1
            if not lines[j].strip().startswith("#"):
                missing.append(stripped)
    assert not missing, missing
