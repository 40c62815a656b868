"""glip_d2 against the official GLIP-T(C), stage by stage (the reference folder's ``README.md``).

The official outputs in ``astronaut.pt`` were computed by microsoft/GLIP on CPU with deterministic weights
(``make_weights.py`` + ``weights_manifest.json``). Here the same weights are generated in the official format
(``{"model": {"module." + key: tensor}}``), converted with glip_d2's converter, loaded into the GLIP-T(C) model
(config GLIP-T_C, random-free: every parameter comes from the file) and run on the same photo and prompt through
glip_d2's own test mapper (resize, prompt from class names, positive map) and tokenizer. Every stage is compared
with the README's tolerances; a stage that fails names the module that differs from the official one.

The reference was run with every prompt padded to MAX_QUERY_LEN (256 tokens), as the official model does; glip_d2's
default inference pads only to the longest prompt (MODEL.LANGUAGE.TEST_PAD_TO_LONGEST). Both paths run: stages
whose shape does not depend on the prompt length are compared with the reference on each path; the others are
compared on the padded path, and the default path must agree with it on the real tokens within the same tolerance.
Each reported difference is the larger of the two. Skipped
when the reference folder is absent (where it is looked for, and ``GLIP_D2_REFERENCE_DIR`` to point at another
copy: tests/reference_data.py). The per-stage differences are printed in the terminal summary (conftest.py).

``GLIP_D2_TEST_DEVICE=cuda`` runs the model on a GPU (TF32 off, so that the float32 tolerances still mean float32).
"""
import math
import os

import numpy as np
import pytest
import torch
from reference_data import (
    FIDELITY_REPORT_KEY,
    load_reference,
    official_reference_weights,
    reference_manifest,
    requires_reference,
)

import glip_d2  # noqa: F401
from glip_d2 import model_zoo
from glip_d2.checkpoint import compare_with_model, convert_official_checkpoint
from glip_d2.checkpoint.skeleton import build_model_uninitialized

DEVICE = os.environ.get("GLIP_D2_TEST_DEVICE", "cpu")
pytestmark = [
    requires_reference,
    pytest.mark.slow,  # a full GLIP-T forward on CPU (about 30 s on an idle 2-core machine)
]

# README tolerances (absolute max |difference|): float32 noise of the official run itself.
TOL = {
    "fpn": 1e-4,
    "backbone_hidden": 2e-5,
    "tower_lang": 2e-5,
    "tower_visual": 1e-3,
    "head_input": 5e-4,
    "dot_product_logits": 1e-4,
    "centerness": 1e-4,
    "bbox_reg": 1e-5,
    "score": 1e-5,
    "box": 1e-3,
}


def sample_index(numel, n=1000):
    """Positions the reference summaries sampled (README: idx = (arange(1000) * (numel - 1)) // 999)."""
    if numel <= n:
        return torch.arange(numel)
    return (torch.arange(n, dtype=torch.int64) * (numel - 1)) // (n - 1)


def max_diff(ref, ours) -> float:
    """max |ref - ours| for a tensor, or over the sampled positions (and the mean) for a reference summary."""
    ours = ours.detach().cpu().double()
    if isinstance(ref, dict) and ref.get("summary"):
        assert list(ours.shape) == list(ref["shape"]), (ours.shape, ref["shape"])
        sampled = ours.reshape(-1)[sample_index(ours.numel())]
        return max((sampled - ref["sample"].double()).abs().max().item(), abs(ours.mean().item() - ref["mean"]))
    assert ours.shape == ref.shape, (tuple(ours.shape), tuple(ref.shape))
    return (ours - ref.double()).abs().max().item() if ref.numel() else 0.0


def token_prefix(padded: torch.Tensor, trimmed: torch.Tensor, dim: int) -> float:
    """max |diff| between the default path's tensor and the padded path's on the default path's token positions
    (``dim``: the token axis)."""
    length = trimmed.shape[dim]
    return max_diff(padded.narrow(dim, 0, length), trimmed)


def pairs(ref, ours):
    """Level-by-level pairs; the number of levels must agree."""
    assert len(ref) == len(ours), f"{len(ours)} levels instead of {len(ref)}"
    return zip(ref, ours)


def official_weights():
    """The reference run's weights, regenerated from make_weights.py + the manifest, in official checkpoint form."""
    weights = official_reference_weights()
    model = {}
    for entry in reference_manifest()["entries"]:
        if not entry["generated"]:  # relative_position_index / cell_anchors: recomputed by glip_d2
            continue
        t = weights.pop(entry["key"])
        assert t.reshape(-1)[0].item() == entry["first"] and math.isclose(
            t.sum(dtype=torch.float64).item(), entry["sum"], rel_tol=1e-6, abs_tol=1e-6
        ), entry["key"]
        model["module." + entry["key"]] = t
    return {"model": model}


def match_as_sets(ref: dict, ours: dict, box_tol: float, score_tol: float):
    """Pair detections of the same label whose boxes and scores both agree within tolerance (clipped boxes of
    different anchors coincide, so the box alone is not an identity). Returns (#unpaired reference detections,
    max box difference, max score difference) over the pairs."""
    ours = {k: v.detach().cpu() for k, v in ours.items()}
    unmatched, worst_box, worst_score = 0, 0.0, 0.0
    for label in torch.unique(torch.cat([ref["labels"], ours["labels"]])):
        r, o = ref["labels"] == label, ours["labels"] == label
        rb, ob = ref["boxes"][r].double(), ours["boxes"][o].double()
        rs, os_ = ref["scores"][r].double(), ours["scores"][o].double()
        box_d = (rb[:, None, :] - ob[None, :, :]).abs().amax(-1)
        score_d = (rs[:, None] - os_[None, :]).abs()
        cost = torch.maximum(box_d / box_tol, score_d / score_tol)
        rows, cols = torch.nonzero(cost <= 1.0, as_tuple=True)
        used_r, used_o = set(), set()
        for k in torch.argsort(cost[rows, cols]).tolist():  # greedy, closest pairs first
            i, j = int(rows[k]), int(cols[k])
            if i in used_r or j in used_o:
                continue
            used_r.add(i)
            used_o.add(j)
            worst_box = max(worst_box, box_d[i, j].item())
            worst_score = max(worst_score, score_d[i, j].item())
        unmatched += len(rb) - len(used_r)
    return unmatched, worst_box, worst_score


@pytest.fixture(scope="module")
def run(tmp_path_factory, pytestconfig):
    """Reference + glip_d2's outputs (with per-block tower captures) for the reference photo and prompt."""
    from detectron2.data import MetadataCatalog
    from PIL import Image

    from glip_d2.data.mapper import GroundingDatasetMapper

    pytestconfig.stash[FIDELITY_REPORT_KEY] = REPORT  # printed in the terminal summary (conftest.py)
    ref = load_reference()
    meta = ref["meta"]
    cfg = model_zoo.get_config("GLIP-T_C", trained=False)
    cfg.MODEL.LANGUAGE.PRETRAINED = False
    cfg.MODEL.LANGUAGE.TOKENIZER = "embedded-minilm"  # the bert-base-uncased vocabulary, offline
    cfg.INPUT.MIN_SIZE_TEST = meta["overrides"]["INPUT.MIN_SIZE_TEST"]
    cfg.INPUT.MAX_SIZE_TEST = meta["overrides"]["INPUT.MAX_SIZE_TEST"]
    cfg.MODEL.DEVICE = DEVICE
    if DEVICE.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    result = convert_official_checkpoint(official_weights())
    model = build_model_uninitialized(cfg)
    compare_with_model(result.state_dict, model.state_dict()).raise_if_any("reference weights")
    missing = model.load_state_dict(result.state_dict, strict=False).missing_keys
    assert not set(missing) & {n for n, _ in model.named_parameters()}
    del result
    model.to(DEVICE).eval()

    # glip_d2's own input pipeline: the test mapper (official resize rule, PIL bilinear, BGR) reading the photo
    # from a lossless file, with the evaluation prompt built from the dataset's class names
    rgb = ref["inputs"]["original_rgb_uint8"].numpy()
    image_file = tmp_path_factory.mktemp("reference") / "astronaut.png"
    Image.fromarray(rgb).save(image_file)
    dataset = "glip_d2_reference_astronaut"
    MetadataCatalog.get(dataset).set(thing_classes=list(meta["label_names"]), evaluator_type="coco")
    try:
        mapper = GroundingDatasetMapper(cfg, is_train=False, dataset_name=dataset)
        inputs = mapper({"file_name": str(image_file), "image_id": 0, "height": rgb.shape[0],
                         "width": rgb.shape[1], "dataset_name": dataset})
    finally:
        MetadataCatalog.remove(dataset)
    resized_rgb = inputs["image"].numpy().transpose(1, 2, 0)[:, :, ::-1]
    prompt = {"caption": inputs["caption"], "positive_map": inputs["positive_map"]}

    padded = infer(model, inputs, pad_to_longest=False)
    default = infer(model, inputs, pad_to_longest=True)
    return {"ref": ref, "resized_rgb": resized_rgb, "prompt": prompt, "padded": padded, "default": default,
            "outputs": default["outputs"]}


def infer(model, inputs, pad_to_longest: bool) -> dict:
    """One inference with stage and per-block tower captures; prompts padded to the longest or to 256."""
    model.test_pad_to_longest = pad_to_longest
    tower = [dict() for _ in model.vl_tower.blocks]
    hooks = []
    for b, block in enumerate(model.vl_tower.blocks):
        def fuse_hook(_m, _i, out, b=b):
            tower[b]["fuse_visual"], tower[b]["fuse_lang"] = list(out[0]), out[1]["hidden"]

        def bert_hook(_m, _i, out, b=b):
            tower[b]["bert_lang"] = out

        def dyconv_hook(_m, _i, out, b=b):
            tower[b]["dyconv_visual"] = list(out)

        hooks += [block.fusion.register_forward_hook(fuse_hook), block.lang_layer.register_forward_hook(bert_hook),
                  block.dyconv.register_forward_hook(dyconv_hook)]
    try:
        with torch.no_grad():
            with model.stage_outputs() as stages:
                outputs = model.inference([inputs])
    finally:
        for h in hooks:
            h.remove()
    return {"stages": stages, "tower": tower, "outputs": outputs}


#: {stage: (max |diff|, tolerance)} in the order the checks ran; conftest.py prints it at the end of the session.
REPORT = {}


def check(stage: str, diff: float, tol: float, module: str):
    REPORT[stage] = (diff, tol)
    assert diff <= tol, f"{stage}: max |diff| {diff:.3e} > {tol:.0e}; the module that differs: {module}"


def check_max(stage: str, diff: float, tol: float, module: str):
    """``check``, reporting the largest difference over the tests that check this stage (one per path)."""
    check(stage, max(diff, REPORT.get(stage, (0.0, tol))[0]), tol, module)


# ------------------------------------------------------------------------------------------------ stages
PATHS = ("padded", "default")


def test_inputs_are_exact(run):
    ref = run["ref"]
    assert np.array_equal(run["resized_rgb"], ref["inputs"]["resized_rgb_uint8"].numpy()), "resize (data/transforms.py)"
    assert run["prompt"]["caption"] == ref["meta"]["caption"], "evaluation prompt (data/prompts.py)"
    for path in PATHS:
        ours = run[path]["stages"]
        diff = max_diff(ref["inputs"]["image_tensor_padded"], ours["inputs"]["image_tensor_padded"])
        check("inputs.image_tensor_padded", diff, 0.0, "GLIP.preprocess_image (normalisation / padding)")
    n = int(ref["meta"]["n_valid_tokens"])
    for key in ("input_ids", "attention_mask"):
        reference = ref["inputs"][key]
        assert torch.equal(run["padded"]["stages"]["inputs"][key].cpu(), reference), f"tokenizer: {key}"
        assert torch.equal(run["default"]["stages"]["inputs"][key].cpu(), reference[:, :n]), f"longest padding: {key}"
    assert not ref["inputs"]["attention_mask"][:, n:].any(), "the reference's tokens past the prompt are padding"
    assert torch.equal(run["prompt"]["positive_map"], ref["inputs"]["positive_map_binary"]), "positive map (tokens.py)"
    REPORT["inputs.ids/mask/positive_map"] = (0.0, 0.0)


def test_fpn(run):
    ref = run["ref"]["backbone"]["fpn"]
    diff = max(max_diff(r, o) for path in PATHS for r, o in pairs(ref, run[path]["stages"]["backbone"]["fpn"]))
    check("backbone.fpn P3-P7", diff, TOL["fpn"], "backbone (modeling/backbone/swin.py or fpn.py)")


def test_language_backbone(run):
    ref, padded, default = (run["ref"]["language"], run["padded"]["stages"]["language"],
                            run["default"]["stages"]["language"])
    for stage, ref_key, key, module in (
        ("language.backbone_hidden", "backbone_hidden", "backbone_hidden", "text encoder (modeling/language/hf_bert.py)"),
        ("language.backbone_embedded", "backbone_embedded_summary", "backbone_embedded",
         "text encoder masking (modeling/language/hf_bert.py)"),
    ):
        diff = max(max_diff(ref[ref_key], padded[key]), token_prefix(padded[key], default[key], dim=1))
        check(stage, diff, TOL["backbone_hidden"], module)


@pytest.mark.parametrize("block", range(6))
def test_tower_block(run, block):
    ref, padded, default = run["ref"]["tower"][block], run["padded"]["tower"][block], run["default"]["tower"][block]
    n = int(run["ref"]["meta"]["n_valid_tokens"])
    lang_pairs = [("fuse_lang", "fusion (modeling/fusion/bi_attention.py)"),
                  ("bert_lang", "extra BERT layer (modeling/fusion/bert_layer.py)")]
    for name, module in lang_pairs:
        if name in ref:  # the last block is stored in full
            diff = max_diff(ref[name], padded[name])
        else:
            diff = max(max_diff(ref[f"{name}_valid_tokens"], padded[name][:, :n]),
                       max_diff(ref[f"{name}_summary"], padded[name]))
        diff = max(diff, token_prefix(padded[name], default[name], dim=1))
        check(f"tower[{block}].{name}", diff, TOL["tower_lang"], module)
    diff = max(max_diff(r, o) for ours in (padded, default) for r, o in pairs(ref["fuse_visual"], ours["fuse_visual"]))
    check(f"tower[{block}].fuse_visual", diff, TOL["tower_visual"], "fusion (modeling/fusion/bi_attention.py)")
    diff = max(max_diff(r, o) for ours in (padded, default)
               for r, o in pairs(ref["dyconv_visual"], ours["dyconv_visual"]))
    tol = TOL["head_input"] if block == 5 else TOL["tower_visual"]
    check(f"tower[{block}].dyconv_visual", diff, tol, "DyConv (modeling/dyhead.py)")


def test_fused_text_and_token_projection(run):
    ref, padded, default = (run["ref"]["language"], run["padded"]["stages"]["language"],
                            run["default"]["stages"]["language"])
    for key, module in (("fused_hidden", "VL tower language path (modeling/dyhead.py VLTower)"),
                        ("dot_product_proj_tokens", "GroundingHead text projection (modeling/grounding_head.py)")):
        diff = max(max_diff(ref[key], padded[key]), token_prefix(padded[key], default[key], dim=1))
        check(f"language.{key}", diff, TOL["tower_lang"], module)


def test_head_outputs(run):
    ref, padded, default = run["ref"]["head"], run["padded"]["stages"]["head"], run["default"]["stages"]["head"]
    for name, tol in (("bbox_reg", TOL["bbox_reg"]), ("centerness", TOL["centerness"])):
        diff = max(max_diff(r, o) for ours in (padded, default) for r, o in pairs(ref[name], ours[name]))
        check(f"head.{name}", diff, tol, "GroundingHead (modeling/grounding_head.py)")
    name = "dot_product_logits"  # [B, anchors, tokens] per level
    diff = max(max(max_diff(r, o) for r, o in pairs(ref[name], padded[name])),
               max(token_prefix(p, d, dim=-1) for p, d in pairs(padded[name], default[name])))
    check(f"head.{name}", diff, TOL[name], "GroundingHead (modeling/grounding_head.py)")


def test_anchors_are_exact(run):
    ref = run["ref"]["anchors"]
    diff = max(max_diff(r, o) for path in PATHS for r, o in pairs(ref, run[path]["stages"]["anchors"]))
    check("anchors", diff, 0.0, "GLIPAnchorGenerator (modeling/anchor_generator.py)")


@pytest.mark.parametrize("path", PATHS)
def test_candidates_before_nms_as_a_set(run, path):
    ref = run["ref"]["pre_nms"]
    ours = run[path]["stages"]["pre_nms"][0]
    ref_d = {"boxes": ref["boxes_xyxy"], "scores": ref["scores"], "labels": ref["labels"]}
    ours_d = {"boxes": ours["boxes_xyxy"], "scores": ours["scores"], "labels": ours["labels"]}
    assert len(ours_d["scores"]) == len(ref_d["scores"]), "post-processor thresholds / top-k (modeling/postprocess.py)"
    unmatched, box, score = match_as_sets(ref_d, ours_d, TOL["box"], TOL["score"])
    assert unmatched == 0, f"{unmatched} pre-NMS candidates differ (modeling/postprocess.py decoding)"
    check_max("pre_nms boxes", box, TOL["box"], "box decoding (modeling/box_coder.py)")
    check_max("pre_nms scores", score, TOL["score"], "score = sqrt(mean token prob x centerness) (modeling/postprocess.py)")


@pytest.mark.parametrize("path", PATHS)
def test_final_detections_as_a_set(run, path):
    ref = run["ref"]["final_sorted"]
    ours = run[path]["stages"]["final_sorted"][0]
    ref_d = {"boxes": ref["boxes_xyxy"], "scores": ref["scores"], "labels": ref["labels"]}
    ours_d = {"boxes": ours["boxes_xyxy"], "scores": ours["scores"], "labels": ours["labels"]}
    assert len(ours_d["scores"]) == len(ref_d["scores"]), "NMS / detections-per-image (modeling/postprocess.py)"
    unmatched, box, score = match_as_sets(ref_d, ours_d, TOL["box"], TOL["score"])
    n = len(ref_d["scores"])
    assert unmatched == 0, f"{unmatched} of {n} final detections differ (NMS, modeling/postprocess.py)"
    check_max("final boxes", box, TOL["box"], "box decoding / clipping (modeling/postprocess.py)")
    check_max("final scores", score, TOL["score"], "scores (modeling/postprocess.py)")
    scale = 512 / 320
    orig = {"boxes": ref["boxes_xyxy_orig"], "scores": ref["scores"], "labels": ref["labels"]}
    ours_orig = {"boxes": ours["boxes_xyxy_orig"], "scores": ours["scores"], "labels": ours["labels"]}
    unmatched, box, _ = match_as_sets(orig, ours_orig, TOL["box"] * scale, TOL["score"])
    assert unmatched == 0, "rescaling to the original image (GLIP._rescale)"
    check_max("final boxes (original image)", box, TOL["box"] * scale, "GLIP._rescale")
    if path == "default":
        inst = run["outputs"][0]["instances"]
        assert inst.image_size == (512, 512) and len(inst) == len(ref_d["scores"])
