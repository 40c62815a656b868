"""Text features reused across images during an evaluation (``modeling.text_cache``): the same detections, the text
encoder run once per prompt, never stale after a weight change, nothing kept outside the evaluation."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import nn

import glip_d2
from glip_d2.data.prompts import vocabulary_prompt
from glip_d2.data.tokens import encode_prompt
from glip_d2.engine.trainer import GLIPTrainer
from glip_d2.modeling.text_cache import TextFeatureCache

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "quick_schedules", "Base-GLIP-tiny.yaml")


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return {"hidden": torch.full((1,), float(value))}

    return compute, calls


def test_cache_computes_once_inside_the_block_and_forgets_after():
    cache, layer = TextFeatureCache(), nn.Linear(2, 2)
    compute, calls = _counting(1)
    with torch.no_grad():
        cache.lookup("a", [layer], compute)
        cache.lookup("a", [layer], compute)
        assert len(calls) == 2 and len(cache) == 0  # not enabled: nothing kept
        with cache.enabled():
            first = cache.lookup("a", [layer], compute)
            first["hidden"] = None  # the caller's dict is its own
            again = cache.lookup("a", [layer], compute)
            assert len(calls) == 3 and again["hidden"].item() == 1.0
            with cache.enabled():  # nested: the same entries
                cache.lookup("a", [layer], compute)
            assert len(calls) == 3 and len(cache) == 1
        assert len(cache) == 0


def test_cache_misses_after_a_weight_change_and_with_autograd():
    cache, layer = TextFeatureCache(), nn.Linear(2, 2)
    compute, calls = _counting(1)
    with cache.enabled():
        with torch.no_grad():
            cache.lookup("a", [layer, None], compute)
            layer.weight.add_(1.0)  # an optimizer step or load_state_dict: version counter moves
            cache.lookup("a", [layer, None], compute)
            layer.load_state_dict({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)})
            cache.lookup("a", [layer, None], compute)
            assert len(calls) == 3
            cache.lookup("a", [layer, None], compute)
            assert len(calls) == 3
            layer.weight = nn.Parameter(torch.ones(2, 2))  # another tensor (its storage may reuse a freed one's)
            cache.lookup("a", [layer, None], compute)
            assert len(calls) == 4
        cache.lookup("a", [layer], compute)  # gradients on: bypassed
        assert len(calls) == 5


def test_cache_keeps_the_most_recent_entries():
    cache = TextFeatureCache(max_entries=2)
    with torch.no_grad(), cache.enabled():
        for key in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
            cache.lookup(key, [], _counting(0)[0])
        compute, calls = _counting(0)
        cache.lookup("a", [], compute)
        cache.lookup("c", [], compute)
        assert calls == []
        cache.lookup("b", [], compute)
        assert calls == [1]
    with pytest.raises(ValueError, match="max_entries"):
        TextFeatureCache(max_entries=0)


@pytest.fixture(scope="module")
def tiny_model():
    cfg = glip_d2.add_glip_config(get_cfg())
    cfg.merge_from_file(TINY)
    cfg.MODEL.LANGUAGE.MAX_QUERY_LEN = 32
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _images(n):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 64, 80), generator=g, dtype=torch.uint8) for _ in range(n)]


def test_evaluation_encodes_each_prompt_once_with_the_same_detections(tiny_model):
    model = tiny_model
    prompts = [encode_prompt(vocabulary_prompt(names), model.language_encoder.tokenizer, 32)
               for names in (["cat", "dog"], ["red ball", "green tree", "bird"])]
    inputs = [dict(image=img, height=64, width=80, prompts=prompts) for img in _images(3)]
    encoded, bias0 = [], model.head.bias0.detach().clone()
    hook = model.language_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        with torch.no_grad():
            model.head.bias0.fill_(4.0)  # enough boxes above the score threshold to compare
            plain = [model.inference([x])[0]["instances"] for x in inputs]
            assert len(encoded) == 6
            with model.text_cache.enabled():
                cached = [model.inference([x])[0]["instances"] for x in inputs]
            assert len(encoded) == 8  # two prompts, once each, for three images
            assert len(model.text_cache) == 0
    finally:
        hook.remove()
        with torch.no_grad():
            model.head.bias0.copy_(bias0)
    for a, b in zip(plain, cached):
        assert len(a) > 10
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)


def test_trainer_test_evaluates_inside_the_cache(tiny_model, monkeypatch):
    seen = []

    def fake_test(cfg, model, evaluators=None):
        seen.append(model.text_cache.active)
        return {}

    monkeypatch.setattr("detectron2.engine.DefaultTrainer.test", staticmethod(fake_test))
    with torch.no_grad():
        GLIPTrainer.test(None, tiny_model)
    assert seen == [True] and not tiny_model.text_cache.active
