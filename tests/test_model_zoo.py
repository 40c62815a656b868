"""Model zoo: entries, configs, ``glip_d2://`` resolution through a local Hugging Face cache, integrity checks.

No network: every test points HF_HUB_CACHE / GLIP_D2_WEIGHTS_DIR / XDG_CACHE_HOME at temporary folders, sets
HF_HUB_OFFLINE=1, and lays files out as huggingface_hub's cache does (blobs + snapshots + refs).
"""
import hashlib
import os
from pathlib import Path

import pytest
import torch
from detectron2.utils.file_io import PathManager
from reference_data import requires_official_keys

import glip_d2  # noqa: F401
from glip_d2 import model_zoo
from glip_d2.checkpoint import (
    KNOWN_ARCHITECTURES,
    ChecksumMismatchError,
    GLIPCheckpointer,
    WeightsNotAvailableError,
    hub,
    resolve_zoo_url,
)
from glip_d2.checkpoint.architecture import GLIP_D2_NAMES, detect_architecture
from glip_d2.checkpoint.skeleton import state_dict_template

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty HF cache + weights dir + glip_d2 cache under tmp_path, offline mode on."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GLIP_D2_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return cache


def put_in_hf_cache(cache: Path, repo: str, filename: str, data: bytes) -> Path:
    """Lay a file out like huggingface_hub's cache: blob by content hash, snapshot symlink, refs/main."""
    root = cache / ("models--" + repo.replace("/", "--"))
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snap = root / "snapshots" / COMMIT / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    if not snap.exists():
        snap.symlink_to(os.path.relpath(blob, snap.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snap


def temporary_entry(monkeypatch, **kw):
    base = dict(name="test-model", config_file="GLIP-T_C.yaml", hf_filename="test_model.pth",
                architecture="GLIP-T", pretrain_data="none", hf_repo="someone/glip-test")
    base.update(kw)
    entry = model_zoo.ModelZooEntry(**base)
    monkeypatch.setitem(model_zoo.MODEL_ZOO, entry.name, entry)
    return entry


# --------------------------------------------------------------------------------------------- the table
def test_entries_name_official_files_and_published_numbers():
    assert model_zoo.list_models() == ["GLIP-T_A", "GLIP-T_B", "GLIP-T_C", "GLIP-T", "GLIP-L"]
    files = {e.name: e.hf_filename for e in model_zoo.MODEL_ZOO.values()}
    assert files == {
        "GLIP-T_A": "glip_a_tiny_o365.pth",
        "GLIP-T_B": "glip_tiny_model_o365.pth",
        "GLIP-T_C": "glip_tiny_model_o365_goldg.pth",
        "GLIP-T": "glip_tiny_model_o365_goldg_cc_sbu.pth",
        "GLIP-L": "glip_large_model.pth",
    }
    assert all(e.hf_repo == "GLIPModel/GLIP" for e in model_zoo.MODEL_ZOO.values())
    coco = {n: e.published["coco_zero_shot"] for n, e in model_zoo.MODEL_ZOO.items()}
    assert coco == {"GLIP-T_A": 42.9, "GLIP-T_B": 44.9, "GLIP-T_C": 46.7, "GLIP-T": 46.6, "GLIP-L": 51.4}
    assert model_zoo.get_entry("glip_d2://GLIP-L") is model_zoo.MODEL_ZOO["GLIP-L"]
    with pytest.raises(KeyError, match="GLIP-T_C"):  # lists the known names
        model_zoo.get_entry("GLIP-XL")
    table = model_zoo.model_zoo_table()
    assert table.count("\n") == 1 + len(model_zoo.MODEL_ZOO)
    assert "| `GLIP-T_C` | `configs/GLIP-T_C.yaml` | `glip_tiny_model_o365_goldg.pth` |" in table
    assert "| 46.7 | 55.1 | 24.9 | 14.3 / 17.7 | 44.4 |" in table


def test_each_config_builds_the_architecture_its_weights_have():
    seen = {}
    for entry in model_zoo.MODEL_ZOO.values():
        cfg = model_zoo.get_config(entry.name)
        assert cfg.MODEL.WEIGHTS == f"glip_d2://{entry.name}"
        assert cfg.MODEL.LANGUAGE.PRETRAINED is False  # the checkpoint carries BERT
        assert model_zoo.get_config(entry.name, trained=False).MODEL.WEIGHTS == ""
        path = model_zoo.get_config_file(entry.name)
        if path not in seen:
            cfg.MODEL.LANGUAGE.TOKENIZER = "embedded-minilm"
            seen[path] = detect_architecture(state_dict_template(cfg), GLIP_D2_NAMES)
        assert seen[path] == KNOWN_ARCHITECTURES[entry.architecture], entry.name


# ---------------------------------------------------------------------------------------- hub resolution
def test_zoo_url_resolves_from_the_hf_cache_without_network(offline):
    snap = put_in_hf_cache(offline, "GLIPModel/GLIP", "glip_tiny_model_o365_goldg.pth", b"weights")
    path = resolve_zoo_url("glip_d2://GLIP-T_C")
    assert Path(path) == snap and Path(path).read_bytes() == b"weights"
    assert PathManager.get_local_path("glip_d2://GLIP-T_C") == path  # any detectron2 code can use the URL
    assert model_zoo.get_weights_path("GLIP-T_C", cache_dir=str(offline), local_files_only=True) == path


def test_local_weights_dir_comes_first(offline, tmp_path):
    put_in_hf_cache(offline, "GLIPModel/GLIP", "glip_large_model.pth", b"from hub cache")
    local = tmp_path / "weights" / "glip_large_model.pth"
    local.parent.mkdir()
    local.write_bytes(b"put here by hand")
    assert resolve_zoo_url("glip_d2://GLIP-L") == str(local)


def test_offline_without_the_file_says_what_to_download_and_where(offline, tmp_path):
    with pytest.raises(WeightsNotAvailableError) as e:
        resolve_zoo_url("glip_d2://GLIP-T_A")
    msg = str(e.value)
    assert "https://huggingface.co/GLIPModel/GLIP/resolve/main/glip_a_tiny_o365.pth" in msg
    assert str(tmp_path / "weights" / "glip_a_tiny_o365.pth") in msg and "GLIP_D2_WEIGHTS_DIR" in msg
    with pytest.raises(WeightsNotAvailableError):  # same error through the checkpointer
        GLIPCheckpointer(torch.nn.Linear(1, 1)).load("glip_d2://GLIP-T_A")


def test_known_size_and_sha256_are_checked_and_a_good_hash_is_remembered(offline, monkeypatch):
    data = b"the real weights"
    good = hashlib.sha256(data).hexdigest()
    put_in_hf_cache(offline, "someone/glip-test", "test_model.pth", data)
    temporary_entry(monkeypatch, size_bytes=len(data) + 1)
    with pytest.raises(ChecksumMismatchError, match=f"has {len(data)} bytes"):
        resolve_zoo_url("glip_d2://test-model")
    temporary_entry(monkeypatch, sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match=good):
        resolve_zoo_url("glip_d2://test-model")
    temporary_entry(monkeypatch, size_bytes=len(data), sha256=good.upper())
    path = resolve_zoo_url("glip_d2://test-model")

    def must_not_hash(_):
        raise AssertionError("verified file hashed again")

    monkeypatch.setattr(hub, "sha256_of_file", must_not_hash)
    assert resolve_zoo_url("glip_d2://test-model") == path  # remembered by path, size and mtime


# ------------------------------------------------------------------------------------------------- get()
def test_get_returns_a_ready_model_from_zoo_weights(offline, monkeypatch, tmp_path):
    """A glip_d2 checkpoint of the small CPU model, published under a zoo name, comes back exactly."""
    from detectron2.modeling import build_model

    config = str(REPO / "configs" / "quick_schedules" / "Base-GLIP-tiny.yaml")
    entry = temporary_entry(monkeypatch, config_file=config, architecture="custom")
    cfg = model_zoo.get_config(entry.name, trained=False)
    source = build_model(cfg)
    GLIPCheckpointer(source, save_dir=str(tmp_path)).save("published")
    put_in_hf_cache(offline, entry.hf_repo, entry.hf_filename, (tmp_path / "published.pth").read_bytes())

    model = model_zoo.get(entry.name, device="cpu")
    assert not model.training and model.device.type == "cpu"
    expected = source.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


@requires_official_keys
def test_get_converts_an_official_file_on_the_fly(offline):
    """glip_d2://GLIP-T_A served from the cache as an official-format file (one constant per key)."""
    from test_checkpoint import assert_holds_official_constants, official_checkpoint

    path = offline.parent / "official.pth"
    torch.save(official_checkpoint("T_A"), path)
    put_in_hf_cache(offline, "GLIPModel/GLIP", "glip_a_tiny_o365.pth", path.read_bytes())
    model = model_zoo.get("GLIP-T_A", device="cpu")
    assert not model.training
    assert_holds_official_constants(model, "T_A", "GLIP-T(A)")
