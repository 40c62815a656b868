"""Self-training input/output: image–caption readers and the sharded, resumable pseudo-label writer."""
import csv
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import glip_d2  # noqa: F401  (detectron2 shims)
from glip_d2.self_training.image_text_pairs import BadPairError, ImageTextPair, iter_image_text_pairs
from glip_d2.self_training.shards import (
    ShardWriter,
    list_shards,
    load_pseudo_shards,
    register_pseudo_grounding,
    shard_path,
)


def _lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _jsonl(path, rows):
    return _lines(path, *(r if isinstance(r, str) else json.dumps(r) for r in rows))


def _captions(n):
    return [{"image": f"img_{i}.jpg", "caption": f"dog number {i} on a mat"} for i in range(n)]


# ------------------------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------------------------
def test_jsonl_accepts_every_key_spelling_and_ignores_blank_lines(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [
        {"image": "a.jpg", "caption": "  a cat  "},
        "",
        {"file_name": "b.jpg", "text": "a dog"},
        {"image_path": "/abs/c.jpg", "caption": "a cow", "url": "ignored"},
    ])
    pairs = list(iter_image_text_pairs(path, image_root="root"))
    assert pairs == [
        ImageTextPair(0, os.path.join("root", "a.jpg"), "a cat", "pairs.jsonl:1"),
        ImageTextPair(1, os.path.join("root", "b.jpg"), "a dog", "pairs.jsonl:3"),
        ImageTextPair(2, "/abs/c.jpg", "a cow", "pairs.jsonl:4"),  # absolute paths are not joined
    ]
    assert [p.image for p in iter_image_text_pairs(path)][:2] == ["a.jpg", "b.jpg"]


def test_csv_and_tsv_read_by_header(tmp_path):
    csv_path = _lines(tmp_path / "pairs.csv", "url,caption,image", 'x,"a cat, sitting",a.jpg', "y,a dog,b.jpg")
    tsv_path = _lines(tmp_path / "pairs.tsv", "file_name\ttext", "a.jpg\ta cat, sitting", "b.jpg\ta dog")
    for path in (csv_path, tsv_path):
        pairs = list(iter_image_text_pairs(path, image_root="/data"))
        assert [(p.index, p.image, p.caption) for p in pairs] == [
            (0, "/data/a.jpg", "a cat, sitting"), (1, "/data/b.jpg", "a dog")]
        assert [p.where for p in pairs] == [f"{os.path.basename(path)}:2", f"{os.path.basename(path)}:3"]
    headerless = _lines(tmp_path / "cc.tsv", "a cat\thttp://x/a.jpg")
    (pair,) = iter_image_text_pairs(headerless, image_root="/data", fieldnames=["caption", "image"])
    assert (pair.image, pair.caption) == ("http://x/a.jpg", "a cat")  # URLs are not joined


def test_csv_rows_are_named_by_their_first_line_and_unreadable_ones_can_be_skipped(tmp_path):
    path = _lines(tmp_path / "pairs.csv", "image,caption", "a.jpg,short", "", "b.jpg," + "x" * 200,
                  'c.jpg,"two', 'lines"', "d.jpg,end")
    limit = csv.field_size_limit(100)  # a stand-in for a corrupt row the csv module refuses
    try:
        counts = {}
        pairs = list(iter_image_text_pairs(path, on_bad_row="skip", counts=counts))
        with pytest.raises(BadPairError, match=r"pairs\.csv:4: unreadable row"):
            list(iter_image_text_pairs(path))
    finally:
        csv.field_size_limit(limit)
    assert [(p.index, p.caption, p.where) for p in pairs] == [
        (0, "short", "pairs.csv:2"), (1, "two\nlines", "pairs.csv:5"), (2, "end", "pairs.csv:7")]
    assert counts == {"pairs": 3, "skipped": 1}


def test_coco_captions_give_one_pair_per_caption(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "five.jpg"}, {"id": 9, "file_name": "nine.jpg"}],
        "annotations": [{"id": 1, "image_id": 9, "caption": "a boat"},
                        {"id": 2, "image_id": 5, "caption": "two birds "},
                        {"id": 3, "image_id": 9, "caption": "a boat on a lake"}],
    }))
    pairs = list(iter_image_text_pairs(str(path), image_root="coco"))
    assert [(p.index, p.image, p.caption) for p in pairs] == [
        (0, os.path.join("coco", "nine.jpg"), "a boat"),
        (1, os.path.join("coco", "five.jpg"), "two birds"),
        (2, os.path.join("coco", "nine.jpg"), "a boat on a lake"),
    ]
    assert pairs[2].where == "captions.json:annotations[2]"


def test_bad_rows_raise_or_are_skipped_and_counted(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [
        {"image": "a.jpg", "caption": "a cat"},
        {"image": "b.jpg", "caption": "   "},
        "{not json",
        {"caption": "no image"},
        {"image": "e.jpg", "caption": "a dog"},
    ])
    for line, reason in ((2, "empty caption"), (3, "invalid JSON"), (4, "image")):
        lines = open(path).read().splitlines()
        only_bad = _lines(tmp_path / f"bad{line}.jsonl", lines[0], lines[line - 1])
        with pytest.raises(BadPairError, match=rf"bad{line}\.jsonl:2: .*{reason}"):
            list(iter_image_text_pairs(only_bad))

    counts = {}
    pairs = list(iter_image_text_pairs(path, on_bad_row="skip", counts=counts))
    assert counts == {"pairs": 2, "skipped": 3}
    assert [(p.index, p.image, p.where) for p in pairs] == [(0, "a.jpg", "pairs.jsonl:1"), (1, "e.jpg", "pairs.jsonl:5")]


def test_coco_caption_of_an_unknown_image_is_a_bad_row(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"image_id": 2, "caption": "x"}, {"image_id": 1, "caption": "y"}]}))
    with pytest.raises(BadPairError, match=r"captions\.json:annotations\[0\]: image_id 2 is not among the images"):
        list(iter_image_text_pairs(str(path)))
    counts = {}
    assert [p.caption for p in iter_image_text_pairs(str(path), on_bad_row="skip", counts=counts)] == ["y"]
    assert counts == {"pairs": 1, "skipped": 1}


def test_a_header_without_an_image_column_fails_even_when_skipping(tmp_path):
    path = _lines(tmp_path / "pairs.csv", "url,caption", "x,a cat")
    with pytest.raises(BadPairError, match=r"pairs\.csv:1: .*no image column"):
        list(iter_image_text_pairs(path, on_bad_row="skip"))


def test_reading_is_lazy(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [{"image": "a.jpg", "caption": "a"}, {"image": "b.jpg", "caption": "b"},
                                             "{broken"])
    pairs = iter_image_text_pairs(path)
    assert next(pairs).image == "a.jpg" and next(pairs).image == "b.jpg"  # line 3 not parsed yet
    with pytest.raises(BadPairError, match=r"pairs\.jsonl:3"):
        next(pairs)


def test_unknown_layout_missing_file_and_bad_option_fail_at_the_call(tmp_path):
    (tmp_path / "pairs.parquet").write_text("")
    with pytest.raises(ValueError, match=r"pairs\.parquet.*\.jsonl"):
        iter_image_text_pairs(str(tmp_path / "pairs.parquet"))
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl.*\.csv"):
        iter_image_text_pairs(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="on_bad_row"):
        iter_image_text_pairs(_jsonl(tmp_path / "ok.jsonl", _captions(1)), on_bad_row="ignore")


# ------------------------------------------------------------------------------------------------------------------
# shards
# ------------------------------------------------------------------------------------------------------------------
def _ground(pair):
    """A stand-in teacher: deterministic boxes on the caption's first two words; every third pair gets none."""
    if pair.index % 3 == 2:
        boxes = []
    else:
        boxes = [{"bbox": [pair.index + 0.123456, 2.0, 10.0 / 3, 4.0], "tokens_positive": [[0, 3]],
                  "phrase": "dog", "score": 0.87654321},
                 {"bbox": [1, 1, 5, 5], "tokens_positive": [[0, 3], [4, 10]], "phrase": "dog number",
                  "score": 0.5}]
    return {"pair": pair, "width": 64, "height": 48, "boxes": boxes}


def _run(output_dir, pairs_file, shard_size, world_size=1, info=None):
    """Every rank of a (sequential) run; returns the shard ids each rank wrote."""
    written = {}
    for rank in range(world_size):
        writer = ShardWriter(output_dir, shard_size, rank=rank, world_size=world_size, info=info)
        for shard_id, pairs in writer.pending(iter_image_text_pairs(pairs_file)):
            assert 0 < len(pairs) <= shard_size and writer.owns(shard_id)
            writer.write(shard_id, [_ground(p) for p in pairs])
            written.setdefault(rank, []).append(shard_id)
    return written


def _bytes(folder):
    return {os.path.basename(p): open(p, "rb").read() for p in list_shards(folder)}


def test_two_ranks_cover_every_pair_exactly_once(tmp_path):
    pairs_file = _jsonl(tmp_path / "pairs.jsonl", _captions(11))
    seen = []
    for rank in range(2):
        writer = ShardWriter(str(tmp_path / "out"), 3, rank=rank, world_size=2)
        for shard_id, pairs in writer.pending(iter_image_text_pairs(pairs_file)):
            assert shard_id % 2 == rank and {p.index // 3 for p in pairs} == {shard_id}
            seen += [p.index for p in pairs]
    assert sorted(seen) == list(range(11))  # shards 0..3, the last one short


def test_resume_redoes_only_the_missing_shard_and_matches_an_uninterrupted_run(tmp_path):
    pairs_file = _jsonl(tmp_path / "pairs.jsonl", _captions(10))
    info = {"teacher": "glip_tiny", "box_threshold": 0.5, "sizes": (800, 1333)}
    assert _run(str(tmp_path / "once"), pairs_file, 4, info=info) == {0: [0, 1, 2]}

    resumed = str(tmp_path / "resumed")
    assert _run(resumed, pairs_file, 4, world_size=2, info=info) == {0: [0, 2], 1: [1]}
    os.remove(shard_path(resumed, 2))
    stale = os.path.join(resumed, ".shard_000002.json.99999.tmp")
    open(stale, "w").write('{"images": [')  # what a killed writer leaves
    assert list_shards(resumed) == [shard_path(resumed, 0), shard_path(resumed, 1)]
    assert _run(resumed, pairs_file, 4, world_size=2, info=info) == {0: [2]}
    assert not os.path.exists(stale)
    assert _bytes(resumed) == _bytes(str(tmp_path / "once")) and len(_bytes(resumed)) == 3

    with pytest.raises(ValueError, match="already holds shards"):
        ShardWriter(resumed, 4, info={"teacher": "another"})
    with pytest.raises(ValueError, match="already holds shards"):
        ShardWriter(resumed, 5, info=info)


def test_shard_content(tmp_path):
    pairs = list(iter_image_text_pairs(_jsonl(tmp_path / "pairs.jsonl", _captions(3))))
    writer = ShardWriter(str(tmp_path / "out"), 4, info={"teacher": "t"})
    path = writer.write(0, [_ground(p) for p in reversed(pairs)])
    data = json.load(open(path))
    assert [img["id"] for img in data["images"]] == [1, 2, 3]
    assert data["images"][0] == {"id": 1, "file_name": "img_0.jpg", "caption": "dog number 0 on a mat",
                                 "width": 64, "height": 48, "dataset_name": "pseudo"}
    ann = data["annotations"][0]
    assert ann["bbox"] == [0.12, 2.0, 3.33, 4.0] and ann["score"] == 0.8765 and ann["area"] == 13.32
    assert (ann["iscrowd"], ann["category_id"], ann["phrase"]) == (0, 1, "dog")
    assert [a["id"] for a in data["annotations"]] == [1, 2, 3, 4]
    assert data["categories"] == [{"id": 1, "name": "object"}]
    assert data["info"] == {"teacher": "t", "shard_id": 0, "shard_size": 4, "index_range": [0, 4], "num_images": 3}
    assert writer.is_done(0) and not writer.is_done(1)
    assert os.listdir(tmp_path / "out") == ["shard_000000.json"]


def test_write_rejects_bad_spans_and_foreign_shards(tmp_path):
    (pair,) = iter_image_text_pairs(_jsonl(tmp_path / "pairs.jsonl", _captions(1)))
    writer = ShardWriter(str(tmp_path / "out"), 2, rank=0, world_size=2)
    record = _ground(pair)
    record["boxes"][1]["tokens_positive"] = [[0, 3], [20, 99]]
    with pytest.raises(ValueError, match=r"pairs\.jsonl:1: span \[20, 99\] .*caption of length 21"):
        writer.write(0, [record])
    with pytest.raises(ValueError, match="belongs to rank 1"):
        writer.write(1, [_ground(pair)])
    assert list_shards(str(tmp_path / "out")) == [] and os.listdir(tmp_path / "out") == []
    with pytest.raises(ValueError, match="reserved"):
        ShardWriter(str(tmp_path / "out"), 2, info={"shard_id": 3})


def test_load_pseudo_shards_round_trip(tmp_path):
    rows = _captions(5)
    rows[1]["image"] = "/abs/img_1.jpg"
    pairs_file = _jsonl(tmp_path / "pairs.jsonl", rows)
    out = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no pseudo-label shards"):
        load_pseudo_shards(out)
    _run(out, pairs_file, 2, world_size=2)

    records = load_pseudo_shards(out, image_root="/images")
    assert [r["image_id"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["file_name"] for r in records][:3] == ["/images/img_0.jpg", "/abs/img_1.jpg", "/images/img_2.jpg"]
    for record, pair in zip(records, iter_image_text_pairs(pairs_file)):
        expected = _ground(pair)
        assert record["caption"] == pair.caption and (record["width"], record["height"]) == (64, 48)
        assert len(record["annotations"]) == len(expected["boxes"])
        for ann, box in zip(record["annotations"], expected["boxes"]):
            assert ann["tokens_positive"] == box["tokens_positive"] and ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert ann["bbox"] == pytest.approx(box["bbox"], abs=0.005)
    assert records[2]["annotations"] == []  # pair 2 had no box: still recorded
    assert load_pseudo_shards(out)[0]["file_name"] == "img_0.jpg"


def test_register_pseudo_grounding(tmp_path):
    out = str(tmp_path / "out")
    _run(out, _jsonl(tmp_path / "pairs.jsonl", _captions(3)), 2)
    name = "test_pseudo_grounding"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_pseudo_grounding(name, out, image_root=str(tmp_path))
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "mixed" and meta.pseudo_label_dir == out
    records = DatasetCatalog.get(name)
    # pair 2 got no box: it stays in its shard (processed) but a caption without a grounded phrase is no training data
    assert [r["image_id"] for r in records] == [1, 2]
    assert records[0]["file_name"] == os.path.join(str(tmp_path), "img_0.jpg")
    assert {a["category_id"] for r in records for a in r["annotations"]} == {0}
    assert MetadataCatalog.get(name).thing_classes == ["object"]
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
