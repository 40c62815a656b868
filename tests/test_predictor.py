"""GLIPPredictor: prompt forms, caching, image conversions, bad input; real detections with the trained tiny model."""
import numpy as np
import pytest
import torch
from tiny_trained import iou_xyxy

from glip_d2.engine.predictor import parse_prompt, to_uint8_image


# ------------------------------------------------------------------------------------------ images (no model)
def test_uint8_bgr_passes_through_unchanged():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = to_uint8_image(img)
    assert out.dtype == np.uint8 and np.array_equal(out, img)


def test_gray_is_replicated_and_alpha_dropped():
    gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    for g in (gray, gray[:, :, None]):
        out = to_uint8_image(g)
        assert out.shape == (2, 2, 3)
        assert all(np.array_equal(out[:, :, c], gray) for c in range(3))
    bgra = np.zeros((2, 2, 4), dtype=np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0
    out = to_uint8_image(bgra)
    assert out.shape == (2, 2, 3) and out[0, 0].tolist() == [10, 20, 30]


def test_sixteen_bit_is_scaled_to_eight_bit():
    img = np.array([[[0, 257, 65535]]], dtype=np.uint16)
    assert to_uint8_image(img)[0, 0].tolist() == [0, 1, 255]


@pytest.mark.parametrize(
    "image, error, match",
    [
        (np.zeros((0, 5, 3), np.uint8), ValueError, "0 pixels"),
        (np.zeros((5, 0), np.uint8), ValueError, "0 pixels"),
        (np.zeros((4, 4, 2), np.uint8), ValueError, "channels"),
        (np.zeros((4, 4, 3), np.float32), TypeError, "uint8"),
        (np.zeros((2, 2, 2, 3), np.uint8), ValueError, "HxW"),
        ([[1, 2]], TypeError, "numpy array"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), TypeError, "torch.Tensor"),
    ],
)
def test_bad_images_raise_clear_errors(image, error, match):
    with pytest.raises(error, match=match):
        to_uint8_image(image)


# ----------------------------------------------------------------------------------------- prompts (no model)
def test_list_prompt_gives_names_in_order():
    kind, names = parse_prompt(["person", " traffic light "])
    assert kind == "names" and names == ["person", "traffic light"]


def test_dotted_string_keeps_caption_and_spans():
    kind, prompt = parse_prompt("person. traffic light. dog")
    assert kind == "prompt"
    assert prompt.caption == "person. traffic light. dog"
    assert prompt.phrases == ["person", "traffic light", "dog"]
    assert prompt.spans == [[(0, 6)], [(8, 21)], [(23, 26)]]
    assert prompt.labels == [0, 1, 2]
    # the official demo form with " . " and a trailing separator reads the same way
    assert parse_prompt("person . dog .")[1].phrases == ["person", "dog"]


def test_free_text_uses_noun_phrases_or_explicit_phrases():
    kind, prompt = parse_prompt("a man riding a horse on the beach")
    assert kind == "prompt"
    assert prompt.phrases == ["a man", "a horse", "the beach"]
    kind, prompt = parse_prompt("a man riding a horse on the beach", phrases=["horse"])
    assert prompt.phrases == ["horse"] and prompt.spans == [[(15, 20)]]
    # a sentence ending with a period is free text, not a one-name list
    assert parse_prompt("A man rides a brown horse.")[1].phrases == ["A man", "a brown horse"]


@pytest.mark.parametrize(
    "prompt, phrases, error, match",
    [
        ("", None, ValueError, "empty"),
        ("   ", None, ValueError, "empty"),
        ([], None, ValueError, "empty list"),
        (["dog", ""], None, ValueError, "empty"),
        (["dog", 3], None, TypeError, "expected str"),
        (5, None, TypeError, "str or a list"),
        ("a dog on grass", ["cat"], ValueError, "does not occur"),
        (["dog"], ["dog"], ValueError, "free-text"),
    ],
)
def test_bad_prompts_raise_clear_errors(prompt, phrases, error, match):
    with pytest.raises(error, match=match):
        parse_prompt(prompt, phrases)


# ------------------------------------------------------------------------------ with the trained tiny model (slow)
@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from tiny_trained import CONFIG, synthetic_root, trained_tiny

    from glip_d2.engine.defaults import load_glip_cfg
    from glip_d2.engine.predictor import GLIPPredictor

    run = trained_tiny(tmp_path_factory)
    cfg = load_glip_cfg(CONFIG, ["MODEL.WEIGHTS", run["weights"], "DATASETS.SYNTHETIC.ROOT",
                                 synthetic_root(tmp_path_factory)])
    return GLIPPredictor(cfg)


@pytest.fixture(scope="module")
def held_out_samples(predictor):
    import cv2
    from detectron2.data import DatasetCatalog

    from glip_d2.data.datasets import (
        SYNTHETIC_CATEGORY_NAMES,
        register_synthetic_from_cfg,
    )

    register_synthetic_from_cfg(predictor.cfg)
    samples = []
    for r in DatasetCatalog.get("synthetic_test")[:12]:
        gt = [(SYNTHETIC_CATEGORY_NAMES[a["category_id"]], list(a["bbox"])) for a in r["annotations"]]
        gt = [(n, [x, y, x + w, y + h]) for n, (x, y, w, h) in gt]
        samples.append((cv2.imread(r["file_name"]), gt))
    return samples


def _detections(instances, threshold=0.3):
    """(box, phrase) of the detections scoring >= threshold, best score first."""
    order = instances.scores.argsort(descending=True).tolist()
    boxes = instances.pred_boxes.tensor.tolist()
    return [(boxes[i], instances.pred_phrases[i]) for i in order if instances.scores[i] >= threshold]


def _recall(instances, gt, threshold=0.3):
    """Fraction of ground-truth objects found by a detection with the right phrase, IoU >= 0.5."""
    dets = _detections(instances, threshold)
    hits = sum(any(p == name and iou_xyxy(b, box) >= 0.5 for b, p in dets) for name, box in gt)
    return hits / len(gt)


@pytest.mark.slow
def test_name_list_prompt_finds_the_objects(predictor, held_out_samples):
    from glip_d2.data.datasets import SYNTHETIC_CATEGORY_NAMES

    recalls = []
    for image, gt in held_out_samples:
        inst = predictor(image, list(SYNTHETIC_CATEGORY_NAMES))
        assert set(inst.pred_phrases) <= set(SYNTHETIC_CATEGORY_NAMES)
        assert inst.pred_classes.tolist() == [SYNTHETIC_CATEGORY_NAMES.index(p) for p in inst.pred_phrases]
        assert inst.image_size == image.shape[:2]
        recalls.append(_recall(inst, gt))
    assert np.mean(recalls) >= 0.5, recalls


def _top_labels(instances, gt, threshold=0.3):
    """For each ground-truth object: the phrase of the highest-scoring detection on it (IoU >= 0.5), or None."""
    dets = _detections(instances, threshold)
    return [next((p for b, p in dets if iou_xyxy(b, box) >= 0.5), None) for _, box in gt]


@pytest.mark.slow
def test_top_label_on_each_object_names_it(predictor, held_out_samples):
    """The names are bound, not just the boxes: the best-scoring box on an object carries its colour word (all 36
    names in the prompt) and its full name (the names in the picture in the prompt, as `make demo` asks)."""
    from glip_d2.data.datasets import SYNTHETIC_CATEGORY_NAMES

    found = colour_right = 0
    found_own = name_right = 0
    total = 0
    for image, gt in held_out_samples:
        total += len(gt)
        for (name, _), top in zip(gt, _top_labels(predictor(image, list(SYNTHETIC_CATEGORY_NAMES)), gt)):
            found += top is not None
            colour_right += top is not None and top.split()[0] == name.split()[0]
        own = sorted({n for n, _ in gt})
        for (name, _), top in zip(gt, _top_labels(predictor(image, own), gt)):
            found_own += top is not None
            name_right += top == name
    # measured on these 12 held-out pictures (38 objects): all names: 35 found, colour right on 32 (91 %); own names:
    # 34 found, name right on 28 (82 %). Chance would be 1/6 of the colours and about 1/3 of the own names. (Shape
    # words alone are not bound yet: README, quick schedule.)
    assert found >= 0.75 * total, (found, total)
    assert colour_right >= 0.8 * found, (colour_right, found)
    assert found_own >= 0.75 * total and name_right >= 0.7 * found_own, (name_right, found_own, total)


@pytest.mark.slow
def test_every_prompt_form_grounds_the_right_phrase(predictor, held_out_samples):
    image, gt = max(held_out_samples, key=lambda s: len(s[1]))
    names = sorted({n for n, _ in gt})
    dotted = ". ".join(names)
    sentence = "there is " + " and ".join("a " + n for n in names)
    forms = [
        (names, None, names),
        (dotted, None, names),
        (sentence, names, names),  # free text with explicit phrases
        (sentence, None, ["a " + n for n in names]),  # free text, noun phrases found automatically
    ]
    for prompt, phrases, expected_rows in forms:
        inst = predictor(image, prompt, phrases)
        assert set(inst.pred_phrases) <= set(expected_rows), (prompt, inst.pred_phrases)
        top = inst[inst.scores.argmax().item()] if len(inst) else None
        assert top is not None and top.pred_phrases[0] in expected_rows
        # the top detection lies on an object of the image (the tiny model localises well; it binds the
        # "colour shape" names only weakly, see test_name_list_prompt_finds_the_objects for phrase-level recall)
        box = top.pred_boxes.tensor[0].tolist()
        assert max(iou_xyxy(box, b) for _, b in gt) >= 0.5, (prompt, box, gt)


@pytest.mark.slow
def test_batch_matches_single_calls_and_prompt_cache(predictor, held_out_samples):
    image, gt = held_out_samples[0]
    names = sorted({n for n, _ in gt})
    single_a = predictor(image, names)
    single_b = predictor(image, ". ".join(names[::-1]))
    hits = predictor.cache_hits
    batch = predictor.predict_batch([image, image], [names, ". ".join(names[::-1])])
    assert predictor.cache_hits == hits + 2  # both prompts re-used from the single calls
    for single, batched in zip((single_a, single_b), batch):
        assert len(single) == len(batched)
        # same image size: no extra padding, so the batch changes only float rounding
        assert torch.allclose(single.scores, batched.scores, atol=1e-4)
        assert torch.allclose(single.pred_boxes.tensor, batched.pred_boxes.tensor, atol=1e-2)
        assert single.pred_phrases == batched.pred_phrases


@pytest.mark.slow
def test_converted_inputs_and_long_prompts(predictor, held_out_samples):
    image, gt = held_out_samples[0]
    names = sorted({n for n, _ in gt})
    reference = predictor(image, names)
    as16 = predictor(image.astype(np.uint16) * 257, names)  # 16-bit scales back to the same 8-bit image
    assert torch.equal(reference.scores, as16.scores)
    bgra = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert torch.equal(predictor(bgra, names).scores, reference.scores)
    gray = predictor(image.mean(axis=2).astype(np.uint8), names)
    assert len(gray.pred_phrases) == len(gray)

    # a name list longer than the token limit is split into several prompts; detections are merged
    from glip_d2.data.datasets import SYNTHETIC_CATEGORY_NAMES

    many = list(SYNTHETIC_CATEGORY_NAMES) + [f"large {n}" for n in SYNTHETIC_CATEGORY_NAMES]
    encoded = predictor.encode_prompt(many)
    assert len(encoded) >= 2
    assert sorted(i for e in encoded for i in e["positive_map_labels"].tolist()) == list(range(len(many)))
    inst = predictor(image, many)
    assert set(inst.pred_phrases) <= set(many) and len(inst) > 0

    # free text cannot be split: a clear error
    with pytest.raises(ValueError, match="MAX_QUERY_LEN"):
        predictor(image, " and ".join("a " + n for n in many), phrases=["red circle"])
    with pytest.raises(ValueError, match="empty"):
        predictor(image, "")
    with pytest.raises(ValueError, match="0 pixels"):
        predictor(image[:0], names)


def test_phrases_must_be_a_list_of_strings():
    from glip_d2.engine.predictor import parse_prompt

    with pytest.raises(TypeError, match="list of str.*'red circle'"):
        parse_prompt("a red circle on a table", "red circle")  # a str would be read letter by letter
    with pytest.raises(TypeError, match="list of str"):
        parse_prompt("a red circle", [3])
    kind, prompt = parse_prompt("a red circle on a table", ["red circle"])
    assert kind == "prompt" and prompt.phrases == ["red circle"]


@pytest.mark.parametrize("prompt", [["cat", "dog", "Cat"], "cat. dog. cat"])
def test_a_name_given_twice_is_an_error(prompt):
    from glip_d2.engine.predictor import parse_prompt

    with pytest.raises(ValueError, match="given twice"):
        parse_prompt(prompt)


def test_names_the_vocabulary_does_not_know_are_reported(caplog):
    from glip_d2.engine.predictor import warn_unknown_phrases
    from glip_d2.tokenization import EMBEDDED_MINILM, _load_tokenizer

    tokenizer = _load_tokenizer(EMBEDDED_MINILM)
    with caplog.at_level("WARNING"):
        assert warn_unknown_phrases(tokenizer, ["cat", "🦒", "狗", "red 🦒"]) == ["🦒", "狗"]
    assert "[UNK]" in caplog.text
