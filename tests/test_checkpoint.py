"""Official GLIP checkpoints -> glip_d2: conversion, strict loading, safe loading, atomic saves, the CLI.

Fake official checkpoints are built from the official key lists (``glip_<variant>.tsv``; where they are looked for:
reference_data.py): every listed key with its shape, the ``module.`` prefix, plus ``model_ema``, ``optimizer``,
``scheduler`` and ``iteration`` entries like a released file. GLIP-T(C) gets real random tensors and goes through the whole
GLIPCheckpointer path; the layout of T(A), T(C) and L is checked with one distinct constant per key (stored as
zero-stride tensors, so even GLIP-L costs no memory) loaded strictly into a weight-free skeleton.
"""
import os
import pickle
import subprocess
import sys
import zlib
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from reference_data import official_key_list, requires_official_keys

import glip_d2  # noqa: F401
from glip_d2 import model_zoo
from glip_d2.checkpoint import (
    CONVERSION_INFO_KEY,
    KNOWN_ARCHITECTURES,
    CheckpointMismatchError,
    CorruptCheckpointError,
    GLIPCheckpointer,
    UnsafeCheckpointError,
    WrongVariantError,
    compare_with_model,
    convert_official_checkpoint,
    load_checkpoint_file,
    map_official_key,
)
from glip_d2.checkpoint.cli import convert_file
from glip_d2.checkpoint.skeleton import build_model_uninitialized, build_skeleton

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {"T_A": ("GLIP-T_A", "GLIP-T(A)"), "T_C": ("GLIP-T_C", "GLIP-T"), "L": ("GLIP-L", "GLIP-L")}


def random_tensor(key, shape, dtype):
    """Deterministic per key (seed crc32(key)), so the test can regenerate a tensor instead of keeping it."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=dtype)
    return torch.randint(0, 1000, shape, generator=g, dtype=dtype)


def constant_tensor(value, shape, dtype):
    """A tensor of one value that owns a single element of storage (stride 0)."""
    return torch.tensor(value, dtype=dtype).expand(shape)


def official_checkpoint(variant, values="constant", drop=(), extra=()):
    """A released-file-like dict. values: 'constant' (key index + 1, stride 0) or 'random' (per-key seed)."""
    model = OrderedDict()
    for i, (key, shape, dtype) in enumerate(official_key_list(variant)):
        if key in drop:
            continue
        t = random_tensor(key, shape, dtype) if values == "random" else constant_tensor(i + 1, shape, dtype)
        model["module." + key] = t
    for key in extra:
        model["module." + key] = torch.zeros(3)
    ema = OrderedDict((k, constant_tensor(-7, v.shape, v.dtype)) for k, v in model.items())
    return {
        "model": model,
        "model_ema": ema,
        "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(2)}},
                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "scheduler": {"last_epoch": 10, "milestones": [67, 89], "base_lrs": [1e-4]},
        "iteration": 123,
    }


def zoo_cfg(name):
    cfg = model_zoo.get_config(name, trained=False)
    cfg.MODEL.LANGUAGE.PRETRAINED = False
    cfg.MODEL.LANGUAGE.TOKENIZER = "embedded-minilm"  # bert-base-uncased vocabulary, offline
    cfg.MODEL.DEVICE = "cpu"
    return cfg


# ------------------------------------------------------------------------------------------------ layout
@requires_official_keys
@pytest.mark.parametrize("variant", ["T_A", "T_C", "L"])
def test_every_official_tensor_lands_on_its_glip_d2_parameter(variant):
    zoo_name, arch_name = VARIANTS[variant]
    ckpt = official_checkpoint(variant)
    result = convert_official_checkpoint(ckpt)
    assert result.architecture == KNOWN_ARCHITECTURES[arch_name]
    assert not result.unmatched
    # 12 (L: 24) relative-position indices + 5 anchor buffers + position_ids + cls_logits weight and bias
    n_dropped = {"T_A": 20, "T_C": 20, "L": 32}[variant]
    assert len(result.dropped) == n_dropped and len(result.mapped) == len(ckpt["model"]) - n_dropped

    skeleton = build_skeleton(zoo_cfg(zoo_name))
    skeleton.load_state_dict(result.state_dict, strict=True, assign=True)  # raises on any missing/extra/shape
    index = {key: i + 1 for i, (key, _, _) in enumerate(official_key_list(variant))}
    params = dict(skeleton.named_parameters())
    assert set(params) == set(result.state_dict)  # every parameter comes from the checkpoint
    for src, dst in result.mapped:
        p = params[dst].reshape(-1)
        assert p[0].item() == p[-1].item() == index[src], (src, dst)  # the official tensor, not EMA (-7)


def test_tower_index_arithmetic_and_part_names():
    arch_fused, arch_a = KNOWN_ARCHITECTURES["GLIP-T"], KNOWN_ARCHITECTURES["GLIP-T(A)"]
    cases = [
        ("rpn.head.dyhead_tower.0.b_attn.gamma_v", arch_fused, "vl_tower.blocks.0.fusion.gamma_v"),
        ("rpn.head.dyhead_tower.13.attention.self.key.bias", arch_fused,
         "vl_tower.blocks.4.lang_layer.attention.self.key.bias"),
        ("rpn.head.dyhead_tower.17.DyConv.0.bn.weight", arch_fused,
         "vl_tower.blocks.5.dyconv.coarser_conv.norm.weight"),
        ("rpn.head.dyhead_tower.5.DyConv.2.conv.weight", arch_a, "vl_tower.blocks.5.dyconv.finer_conv.conv.weight"),
        ("rpn.head.dyhead_tower.3.AttnConv.1.bias", arch_a, "vl_tower.blocks.3.dyconv.scale_attn.bias"),
        ("rpn.head.dyhead_tower.8.relu.fc.2.weight", arch_fused, "vl_tower.blocks.2.dyconv.dyrelu.fc2.weight"),
        ("backbone.fpn.fpn_inner2.weight", arch_a, "backbone.fpn_lateral3.weight"),
        ("backbone.fpn.fpn_layer4.bias", arch_a, "backbone.fpn_output5.bias"),
        ("backbone.fpn.top_blocks.p7.weight", arch_a, "backbone.top_block.p7.weight"),
        ("rpn.head.dot_product_projection_text.weight", arch_a, "head.text_proj.weight"),
        ("rpn.head.scales.3.scale", arch_a, "head.scales.3.scale"),
        ("language_backbone.body.model.encoder.layer.11.output.dense.bias", arch_a,
         "language_encoder.model.encoder.layer.11.output.dense.bias"),
    ]
    for src, arch, dst in cases:
        assert map_official_key(src, arch) == (dst, None), src
    # a DyConv key at a fusion index is structurally impossible: not mapped, never guessed
    assert map_official_key("rpn.head.dyhead_tower.3.offset.weight", arch_fused) == (None, None)
    for dropped in ("rpn.head.cls_logits.bias", "rpn.anchor_generator.cell_anchors.0",
                    "backbone.body.layers.0.blocks.1.attn.relative_position_index",
                    "language_backbone.body.model.embeddings.position_ids",
                    "language_backbone.body.model.pooler.dense.weight"):
        new, reason = map_official_key(dropped, arch_fused)
        assert new is None and reason


# ----------------------------------------------------------------------------------------- mismatches
@requires_official_keys
def test_unknown_official_key_is_listed_and_can_be_ignored_explicitly():
    extra = ["rpn.head.mlm_head.decoder.weight", "rpn.tunable_linear.weight"]
    ckpt = official_checkpoint("T_A", extra=extra)
    with pytest.raises(CheckpointMismatchError) as e:
        convert_official_checkpoint(ckpt)
    assert all(k in str(e.value) for k in extra) and "--ignore" in str(e.value)
    result = convert_official_checkpoint(ckpt, ignore=[r"mlm_head", r"tunable_linear"])
    assert {k for k, why in result.dropped if why == "ignored on request"} == set(extra)


@requires_official_keys
def test_missing_and_wrong_variant_are_reported_in_both_directions():
    template = build_skeleton(zoo_cfg("GLIP-T_C")).state_dict()
    missing = convert_official_checkpoint(official_checkpoint("T_C", drop={"rpn.head.bbox_pred.weight"}))
    cmp = compare_with_model(missing.state_dict, template)
    assert cmp.missing == ["head.bbox_pred.weight"] and not cmp.unexpected and not cmp.shape_mismatch
    with pytest.raises(CheckpointMismatchError, match=r"head\.bbox_pred\.weight") as e:
        cmp.raise_if_any("fake.pth")
    assert not isinstance(e.value, WrongVariantError)

    t_a = convert_official_checkpoint(official_checkpoint("T_A"))
    cmp = compare_with_model(t_a.state_dict, template)
    assert cmp.checkpoint_arch.name == "GLIP-T(A)" and cmp.model_arch.name == "GLIP-T"
    assert len(cmp.missing) == 6 * (18 + 16) and not cmp.unexpected  # 6 fusion + 6 BERT layers
    with pytest.raises(WrongVariantError) as e:
        cmp.raise_if_any("glip_a_tiny_o365.pth")
    msg = str(e.value)
    assert "checkpoint: GLIP-T(A)" in msg and "model:      GLIP-T" in msg
    assert "vl_tower.blocks.0.fusion.gamma_v" in msg and "vl_tower.blocks.5.lang_layer.output.dense.weight" in msg


# ------------------------------------------------------------------------------ through GLIPCheckpointer
def zeroed_model(zoo_name):
    """A real (allocated) model; parameters start as zeros so that loading is visible."""
    model = build_model_uninitialized(zoo_cfg(zoo_name))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


@pytest.fixture(scope="module")
def ta_model():
    return zeroed_model("GLIP-T_A")


def assert_holds_official_constants(model, variant, arch_name):
    """Every parameter equals the constant (key index + 1) of the official tensor it came from."""
    state = model.state_dict()
    covered = set()
    for i, (key, _, _) in enumerate(official_key_list(variant)):
        new, _ = map_official_key(key, KNOWN_ARCHITECTURES[arch_name])
        if new is not None:
            t = state[new].reshape(-1)
            assert t.min().item() == t.max().item() == i + 1, (key, new)
            covered.add(new)
    assert covered == {n for n, _ in model.named_parameters()}


@requires_official_keys
def test_official_file_loads_through_checkpointer_model_entry_only(ta_model, tmp_path, caplog):
    path = tmp_path / "glip_a_tiny_o365.pth"
    torch.save(official_checkpoint("T_A"), path)
    with caplog.at_level("INFO", logger="glip_d2.checkpoint.checkpointer"):
        extra = GLIPCheckpointer(ta_model).load(str(path))
    assert "official GLIP checkpoint (GLIP-T(A)): converted" in caplog.text
    assert not {"optimizer", "model_ema", "scheduler", "iteration"} & set(extra)  # never reach checkpointables
    assert_holds_official_constants(ta_model, "T_A", "GLIP-T(A)")


@requires_official_keys
def test_checkpointer_refuses_wrong_variant_and_missing_keys_without_touching_the_model(ta_model, tmp_path):
    with torch.no_grad():
        ta_model.head.bbox_pred.weight.fill_(3.0)
    t_c = tmp_path / "glip_tiny_model_o365_goldg.pth"
    torch.save(official_checkpoint("T_C"), t_c)
    with pytest.raises(WrongVariantError, match=r"checkpoint: GLIP-T \(Swin") as e:
        GLIPCheckpointer(ta_model).load(str(t_c))
    assert "model:      GLIP-T(A)" in str(e.value) and "vl_tower.blocks.0.fusion.gamma_v" in str(e.value)
    holed = tmp_path / "holed.pth"
    torch.save(official_checkpoint("T_A", drop={"rpn.head.dyhead_tower.4.offset.weight"}), holed)
    with pytest.raises(CheckpointMismatchError, match=r"vl_tower\.blocks\.4\.dyconv\.offset\.weight"):
        GLIPCheckpointer(ta_model).load(str(holed))
    assert (ta_model.head.bbox_pred.weight == 3.0).all()


@requires_official_keys
@pytest.mark.slow
def test_random_tc_file_loads_exactly_and_survives_save_load(tmp_path, caplog):
    """Full scale with real random values: GLIP-T(C) official file -> model -> save -> load (0.9 GB each)."""
    path = tmp_path / "glip_tiny_model_o365_goldg.pth"
    torch.save(official_checkpoint("T_C", values="random"), path)
    model = zeroed_model("GLIP-T_C")
    with caplog.at_level("INFO", logger="glip_d2.checkpoint.checkpointer"):
        GLIPCheckpointer(model).load(str(path))
    assert "official GLIP checkpoint (GLIP-T): converted" in caplog.text
    path.unlink()
    state = model.state_dict()
    covered = set()
    for key, shape, dtype in official_key_list("T_C"):
        new, _ = map_official_key(key, KNOWN_ARCHITECTURES["GLIP-T"])
        if new is not None:
            assert torch.equal(state[new], random_tensor(key, shape, dtype)), key
            covered.add(new)
    assert covered == {n for n, _ in model.named_parameters()}

    reference = {k: v.clone() for k, v in state.items()}
    GLIPCheckpointer(model, save_dir=str(tmp_path)).save("model_final", iteration=7)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    extra = GLIPCheckpointer(model).load(str(tmp_path / "model_final.pth"))
    assert extra["iteration"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k


# ------------------------------------------------------------------------------------------- the CLI
@requires_official_keys
def test_converted_file_has_provenance_loads_strictly_and_round_trips_exactly(tmp_path, ta_model):
    import hashlib

    src = tmp_path / "glip_a_tiny_o365.pth"
    torch.save(official_checkpoint("T_A"), src)
    dst = tmp_path / "converted.pth"
    outcome = convert_file(str(src), str(dst))
    assert outcome.comparison.ok and outcome.written == str(dst)
    saved = load_checkpoint_file(str(dst))
    assert set(saved) == {"model", CONVERSION_INFO_KEY}
    info = saved[CONVERSION_INFO_KEY]
    assert info["source_file"] == "glip_a_tiny_o365.pth" and info["variant"] == "GLIP-T(A)"
    assert info["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert info["entry"] == "model" and len(info["dropped"]) == 20
    for k, v in outcome.result.state_dict.items():  # save -> load of the converted weights is exact
        assert torch.equal(saved["model"][k], v), k

    with torch.no_grad():
        for p in ta_model.parameters():
            p.zero_()
    GLIPCheckpointer(ta_model).load(str(dst))
    assert_holds_official_constants(ta_model, "T_A", "GLIP-T(A)")
    t_c = tmp_path / "t_c.pth"
    torch.save(official_checkpoint("T_C"), t_c)
    convert_file(str(t_c), str(tmp_path / "t_c_d2.pth"), check_model=False)
    with pytest.raises(WrongVariantError, match=r"converted GLIP checkpoint"):  # converted files are strict too
        GLIPCheckpointer(ta_model).load(str(tmp_path / "t_c_d2.pth"))

    ema = convert_file(str(src), None, use_ema=True, check_model=False)
    assert all(v.reshape(-1)[0].item() == -7 for v in ema.result.state_dict.values())


@requires_official_keys
def test_cli_refuses_and_lists_keys_in_both_directions(tmp_path, capsys):
    from glip_d2.checkpoint.cli import main

    src = tmp_path / "odd.pth"
    ckpt = official_checkpoint("T_A", drop={"rpn.head.centerness.bias"}, extra=["rpn.head.token_logits.weight"])
    torch.save(ckpt, src)
    dst = tmp_path / "out.pth"
    assert main([str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "1 official key(s) match no conversion rule" in err and "rpn.head.token_logits.weight" in err
    assert "1 glip_d2 key(s) not provided by the file" in err and "head.centerness.bias" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.pth"]  # nothing written, no temp file


@requires_official_keys
@pytest.mark.slow
def test_cli_script_runs_as_a_program(tmp_path):
    src = tmp_path / "glip_a_tiny_o365.pth"
    torch.save(official_checkpoint("T_A"), src)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_glip_checkpoint.py"), str(src), str(tmp_path / "out.pth")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "GLIP-T(A)" in proc.stdout
    assert load_checkpoint_file(str(tmp_path / "out.pth"))[CONVERSION_INFO_KEY]["variant"] == "GLIP-T(A)"


@requires_official_keys
def test_cli_check_prints_the_mapping(tmp_path, capsys):
    from glip_d2.checkpoint.cli import main

    src = tmp_path / "glip_large_model.pth"
    torch.save(official_checkpoint("L"), src)
    assert main([str(src), "--check"]) == 0
    out = capsys.readouterr().out
    assert "GLIP-L (Swin embed 192" in out
    assert "rpn.head.dyhead_tower.23.offset.weight  ->  vl_tower.blocks.7.dyconv.offset.weight" in out
    assert "rpn.head.cls_logits.weight  dropped" in out and "conversion would succeed" in out
    assert [p.name for p in tmp_path.iterdir()] == ["glip_large_model.pth"]  # nothing written


# ------------------------------------------------------------------------------------------ safe loading
class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_file_that_would_execute_code_is_refused(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    payload = {"model": {"w": torch.ones(2)} if suffix == ".pth" else {"w": 1}, "x": _RunsACommand(marker)}
    if suffix == ".pth":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match=r"system") as e:
        load_checkpoint_file(str(path))
    assert str(path) in str(e.value) and "execute" in str(e.value)
    with pytest.raises(UnsafeCheckpointError):
        GLIPCheckpointer(torch.nn.Linear(2, 2)).load(str(path))
    assert not marker.exists()


@requires_official_keys
def test_truncated_empty_and_foreign_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(official_checkpoint("T_A"), good)
    data = good.read_bytes()
    cases = {"half.pth": data[: len(data) // 2], "tail.pth": data[:-40], "empty.pth": b"",
             "text.pth": b"<html>404 Not Found</html>" * 20}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CorruptCheckpointError) as e:
            load_checkpoint_file(str(tmp_path / name))
        msg = str(e.value)
        assert str(tmp_path / name) in msg and ("truncated" in msg or "is empty" in msg), msg
        assert "Traceback" not in msg and e.value.__cause__ is None
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        GLIPCheckpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "missing.pth"))


def test_numpy_content_is_allowed(tmp_path):
    import numpy as np

    path = tmp_path / "np.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "__author__": "x"}))
    assert load_checkpoint_file(str(path))["model"]["w"].sum() == 15
    pth = tmp_path / "np.pth"
    torch.save({"model": {"w": torch.ones(2)}, "stats": np.float64(2.5), "arr": np.zeros(3)}, pth)
    assert load_checkpoint_file(str(pth))["stats"] == 2.5


# ------------------------------------------------------------------------------------------ atomic saves
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = GLIPCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()
    saved_weight = model.weight.detach().clone()

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PARTIAL")
        raise KeyboardInterrupt

    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_final")
    monkeypatch.undo()
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]  # no temp left
    fresh = torch.nn.Linear(3, 2)
    GLIPCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    assert torch.equal(fresh.weight, saved_weight)


def test_strict_mode_applies_to_any_checkpoint_and_tolerates_a_ddp_prefix(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    partial = tmp_path / "partial.pth"
    torch.save({"model": {"0.weight": torch.ones(2, 3), "0.bias": torch.ones(2)}}, partial)
    GLIPCheckpointer(model).load(str(partial))  # detectron2's lenient default: a partial load
    assert (model[0].weight == 1).all()
    with pytest.raises(CheckpointMismatchError, match=r"1\.weight") as e:
        GLIPCheckpointer(model, strict=True).load(str(partial))
    assert "2 model key(s) missing" in str(e.value)
    ddp = tmp_path / "ddp.pth"
    torch.save({"model": {"module." + k: torch.full_like(v, 2.0) for k, v in model.state_dict().items()}}, ddp)
    GLIPCheckpointer(model, strict=True).load(str(ddp))
    assert all((p == 2).all() for p in model.parameters())
