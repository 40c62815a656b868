"""Mixing gold and pseudo-label training sets: DATASETS.TRAIN_SAMPLING_RATIOS and DATASETS.REGISTER_PSEUDO.

The shares are checked twice: exactly from the repeat factors, and empirically from detectron2's own
``RepeatFactorTrainingSampler``, the sampler the training loader uses.
"""
import itertools
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from PIL import Image

from glip_d2 import add_glip_config
from glip_d2.data.datasets import register_datasets_from_cfg
from glip_d2.data.sampling_ratios import (
    build_ratio_sampler,
    mix_datasets,
    repeat_factors_for_ratios,
    sampling_ratios_from_cfg,
)
from glip_d2.self_training.image_text_pairs import ImageTextPair
from glip_d2.self_training.shards import ShardWriter

REPO = Path(__file__).resolve().parents[1]


def _cfg(train=(), ratios=()):
    cfg = add_glip_config(get_cfg())
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.DATASETS.TRAIN_SAMPLING_RATIOS = list(ratios)
    return cfg


def _records(tag, n):
    return [{"image_id": i, "file_name": f"{tag}_{i}.png"} for i in range(n)]


def _shares(sizes, factors):
    """Expected share of each dataset from the per-record factors (each record drawn factor times per pass)."""
    starts = np.cumsum([0] + list(sizes))
    per_dataset = [float(factors[a:b].double().sum()) for a, b in zip(starts[:-1], starts[1:])]
    return [w / sum(per_dataset) for w in per_dataset]


@pytest.fixture
def unregister():
    """Names registered by a test are removed afterwards, so tests do not see each other's datasets."""
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _shard_folder(root, tag, n, *, image_root=None, shard_size=2):
    """``n`` pairs ``{tag}_{i}.png`` / "dog number i on a mat" with one box on "dog", written as shards under
    ``root/tag``; the images (64x48) are written into ``image_root`` when given."""
    pairs = [ImageTextPair(i, f"{tag}_{i}.png", f"dog number {i} on a mat", f"{tag}:{i}") for i in range(n)]
    writer = ShardWriter(str(root / tag), shard_size)
    for shard_id, batch in writer.pending(pairs):
        writer.write(shard_id, [{"pair": p, "width": 64, "height": 48, "boxes": [
            {"bbox": [4, 6, 30, 20], "tokens_positive": [[0, 3]], "phrase": "dog", "score": 0.9}]} for p in batch])
    if image_root is not None:
        for p in pairs:
            Image.fromarray(np.full((48, 64, 3), 40 + p.index, np.uint8)).save(os.path.join(image_root, p.image))
    return str(root / tag)


# ------------------------------------------------------------------------------------------------------------------
# repeat factors
# ------------------------------------------------------------------------------------------------------------------
def test_factors_give_the_requested_shares_exactly():
    sizes, ratios = [30, 200, 50], [0.5, 0.3, 0.2]
    named = [(f"d{i}", _records(f"d{i}", n)) for i, n in enumerate(sizes)]
    dataset, factors = mix_datasets(named, ratios)
    assert [r["file_name"] for r in dataset] == [r["file_name"] for _, recs in named for r in recs]  # concatenated
    assert factors.shape == (280,) and float(factors.min()) == 1.0  # the least weighted records appear once a pass
    assert _shares(sizes, factors) == pytest.approx(ratios, abs=1e-6)
    assert repeat_factors_for_ratios(sizes, ratios) == pytest.approx([0.5 / 30 / 0.0015, 1.0, 0.2 / 50 / 0.0015])
    # ratios in proportion to the sizes: every factor 1, i.e. detectron2's default TrainingSampler
    assert repeat_factors_for_ratios(sizes, [30, 200, 50]) == pytest.approx([1.0, 1.0, 1.0])


def test_repeat_factor_sampler_draws_the_requested_shares():
    sizes, ratios = [30, 200, 50], [0.5, 0.3, 0.2]
    named = [(f"d{i}", _records(f"d{i}", n)) for i, n in enumerate(sizes)]
    dataset, sampler = build_ratio_sampler(named, ratios, seed=0)
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    drawn = np.fromiter(itertools.islice(iter(sampler), 20000), dtype=np.int64)
    source = np.repeat(np.arange(len(sizes)), sizes)[drawn]
    empirical = np.bincount(source, minlength=len(sizes)) / len(drawn)
    assert empirical == pytest.approx(ratios, abs=0.02)
    # every record of a dataset is equally likely: the small set is not drawn from a few of its images only
    assert len(set(drawn[source == 0].tolist())) == 30


def test_the_sampler_logs_each_datasets_size_ratio_and_factor(caplog):
    named = [("gold", _records("g", 10)), ("pseudo", _records("p", 90))]
    with caplog.at_level(logging.INFO, logger="glip_d2.data.sampling_ratios"):
        logging.getLogger("glip_d2.data.sampling_ratios").addHandler(caplog.handler)
        try:
            build_ratio_sampler(named, [0.5, 0.5], seed=0)
        finally:
            logging.getLogger("glip_d2.data.sampling_ratios").removeHandler(caplog.handler)
    (line,) = {r.getMessage() for r in caplog.records if "TRAIN_SAMPLING_RATIOS" in r.getMessage()}
    assert "gold (10 records, ratio 0.500, repeat factor 9.000)" in line
    assert "pseudo (90 records, ratio 0.500, repeat factor 1.000)" in line


# ------------------------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------------------------
def test_ratios_are_normalised_and_empty_means_default():
    assert sampling_ratios_from_cfg(_cfg(["a", "b"])) == []
    assert sampling_ratios_from_cfg(_cfg(["a", "b"], [3, 1])) == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize("ratios", [[1.0], [1.0, 2.0, 3.0], [1.0, 0.0], [1.0, -0.5], [1.0, float("nan")]])
def test_bad_ratios_are_an_error_naming_the_key_and_the_datasets(ratios):
    with pytest.raises(ValueError, match=r"DATASETS\.TRAIN_SAMPLING_RATIOS(.|\n)*\['gold_set', 'pseudo_set'\]"):
        sampling_ratios_from_cfg(_cfg(["gold_set", "pseudo_set"], ratios))


def test_an_empty_dataset_cannot_be_sampled_at_a_ratio():
    with pytest.raises(ValueError, match=r"\['empty_set'\]"):
        mix_datasets([("full", _records("f", 3)), ("empty_set", [])], [0.5, 0.5])


# ------------------------------------------------------------------------------------------------------------------
# DATASETS.REGISTER_PSEUDO
# ------------------------------------------------------------------------------------------------------------------
def test_register_pseudo_makes_shards_a_named_dataset(tmp_path, unregister):
    folder = _shard_folder(tmp_path, "pseudo_a", 3)
    cfg = _cfg()
    cfg.DATASETS.REGISTER_PSEUDO = [("test_pseudo_reg_rooted", folder, str(tmp_path / "imgs")),
                                    ("test_pseudo_reg_as_written", folder, "")]
    unregister += ["test_pseudo_reg_rooted", "test_pseudo_reg_as_written"]
    assert register_datasets_from_cfg(cfg) == ["test_pseudo_reg_rooted", "test_pseudo_reg_as_written"]
    records = DatasetCatalog.get("test_pseudo_reg_rooted")
    assert [r["caption"] for r in records] == [f"dog number {i} on a mat" for i in range(3)]
    assert all(a["tokens_positive"] == [[0, 3]] for r in records for a in r["annotations"])
    assert records[0]["file_name"] == os.path.join(str(tmp_path / "imgs"), "pseudo_a_0.png")
    assert DatasetCatalog.get("test_pseudo_reg_as_written")[0]["file_name"] == "pseudo_a_0.png"
    assert MetadataCatalog.get("test_pseudo_reg_rooted").pseudo_label_dir == folder
    assert register_datasets_from_cfg(cfg) == ["test_pseudo_reg_rooted", "test_pseudo_reg_as_written"]  # idempotent


def test_register_pseudo_errors_name_the_entry(tmp_path):
    cfg = _cfg()
    cfg.DATASETS.REGISTER_PSEUDO = [("test_pseudo_malformed", str(tmp_path))]
    with pytest.raises(ValueError, match="test_pseudo_malformed"):
        register_datasets_from_cfg(cfg)
    cfg.DATASETS.REGISTER_PSEUDO = [("test_pseudo_missing", str(tmp_path / "nope"), "")]
    with pytest.raises(FileNotFoundError, match="test_pseudo_missing(.|\n)*nope"):
        register_datasets_from_cfg(cfg)
    (tmp_path / "empty").mkdir()
    cfg.DATASETS.REGISTER_PSEUDO = [("test_pseudo_no_shards", str(tmp_path / "empty"), "")]
    with pytest.raises(FileNotFoundError, match="test_pseudo_no_shards(.|\n)*no shards"):
        register_datasets_from_cfg(cfg)
    assert not {"test_pseudo_malformed", "test_pseudo_missing", "test_pseudo_no_shards"} & set(DatasetCatalog.list())


# ------------------------------------------------------------------------------------------------------------------
# the training loader
# ------------------------------------------------------------------------------------------------------------------
def _mixed_cfg(tmp_path, ratios):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/quick_schedules/glip_tiny_synthetic.yaml"))
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    gold = _shard_folder(tmp_path, "mix_gold", 2, image_root=str(images))
    pseudo = _shard_folder(tmp_path, "mix_pseudo", 8, image_root=str(images))
    cfg.DATASETS.REGISTER_PSEUDO = [("test_mix_gold", gold, str(images)), ("test_mix_pseudo", pseudo, str(images))]
    cfg.DATASETS.TRAIN = ("test_mix_gold", "test_mix_pseudo")
    cfg.DATASETS.TRAIN_SAMPLING_RATIOS = list(ratios)
    cfg.INPUT.PROMPT.TRAIN_SOURCE = "caption"
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def test_train_loader_mixes_two_registered_shard_folders(tmp_path, unregister):
    from glip_d2.engine import GLIPTrainer

    unregister += ["test_mix_gold", "test_mix_pseudo"]
    cfg = _mixed_cfg(tmp_path, [3.0, 1.0])
    cfg.DATASETS.GENERAL_COPY = 2
    records = GLIPTrainer.build_train_records(cfg)  # what SOLVER.MAX_EPOCH counts: each list, copies applied
    assert [os.path.basename(r["file_name"]) for r in records] == (
        ["mix_gold_0.png", "mix_gold_1.png"] * 2 + [f"mix_pseudo_{i}.png" for i in range(8)] * 2)
    np.random.seed(0)  # the sampler's shared seed: a fixed, non-flaky draw
    loader = GLIPTrainer.build_train_loader(cfg)
    batches = list(itertools.islice(iter(loader), 6))
    names = [os.path.basename(d["file_name"]) for batch in batches for d in batch]
    assert len(names) == 12 and all(len(batch) == 2 for batch in batches)
    gold = sum(n.startswith("mix_gold") for n in names)
    # both sources, gold near its 75 % share (9 of 12 with this seed) though it is 4 of the 20 records
    assert 6 <= gold < 12
    assert all(b["image"].shape[0] == 3 and len(b["instances"]) == 1 for batch in batches for b in batch)


def test_bad_ratios_fail_before_any_data_is_loaded(tmp_path, unregister):
    from glip_d2.engine import GLIPTrainer

    unregister += ["test_mix_gold", "test_mix_pseudo"]
    cfg = _mixed_cfg(tmp_path, [1.0])
    for image in (tmp_path / "images").iterdir():
        image.unlink()  # loading would now fail on the missing images: the ratios must be checked first
    with pytest.raises(ValueError, match=r"DATASETS\.TRAIN_SAMPLING_RATIOS(.|\n)*test_mix_gold"):
        GLIPTrainer.build_train_loader(cfg)
