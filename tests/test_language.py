"""HF BERT language encoder and tokenizer: official tokenisation, output definitions, freezing, errors, fidelity."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from reference_data import load_reference, official_reference_weights, requires_reference

from glip_d2 import add_glip_config
from glip_d2.checkpoint import KNOWN_ARCHITECTURES, map_official_key, official_state_dict
from glip_d2.modeling.language import (
    LANGUAGE_ENCODER_REGISTRY,
    HFBertEncoder,
    build_language_encoder,
)
from glip_d2.tokenization import EMBEDDED_MINILM, build_tokenizer, resolve_language_model_name

GLIP_T = KNOWN_ARCHITECTURES["GLIP-T"]
CAPTION = "person. flag. rocket. face"
# bert-base-uncased ids: [CLS] person . flag . rocket . face [SEP]
CAPTION_IDS = [101, 2711, 1012, 5210, 1012, 7596, 1012, 2227, 102]


def lang_cfg(**kw):
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.LANGUAGE.MODEL_NAME = EMBEDDED_MINILM
    cfg.MODEL.LANGUAGE.HIDDEN_DIM = 384
    for k, v in kw.items():
        setattr(cfg.MODEL.LANGUAGE, k, v)
    return cfg


@pytest.fixture(scope="module")
def minilm():
    return build_language_encoder(lang_cfg()).eval()


def test_registry_and_embedded_name_resolution():
    assert LANGUAGE_ENCODER_REGISTRY.get("HFBertEncoder") is HFBertEncoder
    folder = resolve_language_model_name(EMBEDDED_MINILM)
    assert os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(folder, "vocab.txt"))
    assert resolve_language_model_name("bert-base-uncased") == "bert-base-uncased"


def test_tokenize_pads_to_max_query_len_with_official_ids(minilm):
    batch = minilm.tokenize([CAPTION, "a cat"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == (2, 256)
    assert ids[0, :9].tolist() == CAPTION_IDS and ids[0, 9:].eq(0).all()
    assert mask[0].tolist() == [1] * 9 + [0] * 247
    assert ids[1, :4].tolist() == [101, 1037, 4937, 102] and mask[1].sum() == 4


def test_tokenize_longest_padding_when_pad_max_is_off():
    enc = build_language_encoder(lang_cfg(PAD_MAX=False))
    batch = enc.tokenize([CAPTION, "a cat"])
    assert batch["input_ids"].shape == (2, 9)
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_caption_over_the_limit_raises_naming_it():
    enc = build_language_encoder(lang_cfg(MAX_QUERY_LEN=8))
    enc.tokenize(["person. flag. rocket"])  # 8 tokens with [CLS]/[SEP]: fits exactly
    with pytest.raises(ValueError, match=r"9 tokens.*MAX_QUERY_LEN=8.*rocket\. face"):
        enc.tokenize(["ok", CAPTION])
    with pytest.raises(ValueError, match="list of strings"):
        enc.tokenize(CAPTION)


def test_bert_base_uncased_tokenizer_falls_back_to_the_embedded_vocabulary():
    cfg = add_glip_config(get_cfg())  # MODEL_NAME bert-base-uncased, TOKENIZER ""
    tok = build_tokenizer(cfg)
    embedded = build_tokenizer(lang_cfg())
    assert tok.get_vocab() == embedded.get_vocab()
    assert tok(CAPTION)["input_ids"] == CAPTION_IDS
    assert tok("PERSON")["input_ids"][1] == 2711  # lower-cased


def test_pretrained_weights_are_loaded_from_the_folder(minilm):
    from safetensors.torch import load_file

    stored = load_file(os.path.join(resolve_language_model_name(EMBEDDED_MINILM), "model.safetensors"))
    key = next(k for k in stored if k.endswith("encoder.layer.3.attention.self.query.weight"))
    torch.testing.assert_close(minilm.model.encoder.layer[3].attention.self.query.weight, stored[key])
    assert minilm.model.pooler is None
    assert minilm.model.config._attn_implementation == "eager"
    assert minilm.hidden_dim == 384 and minilm.max_query_len == 256


def test_forward_outputs_follow_the_contract(minilm):
    batch = minilm.tokenize([CAPTION, "a cat"])
    with torch.no_grad():
        out = minilm(**batch)
        direct = minilm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert set(out) == {"hidden", "embedded", "masks"}
    torch.testing.assert_close(out["hidden"], direct)
    # hidden is not masked: padded rows carry values; embedded zeroes exactly those rows
    assert out["hidden"][1, 4:].abs().sum() > 0
    assert out["embedded"][1, 4:].abs().sum() == 0
    torch.testing.assert_close(out["embedded"][1, :4], out["hidden"][1, :4], rtol=0, atol=0)
    assert torch.equal(out["masks"], batch["attention_mask"])


def test_num_layers_and_mask_special():
    enc = build_language_encoder(lang_cfg(NUM_LAYERS=2, MASK_SPECIAL=True)).eval()
    batch = enc.tokenize([CAPTION])
    with torch.no_grad():
        out = enc(**batch)
        states = enc.model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"][..., None].float()
    # official: mean of the last n layers, divided by n once more
    torch.testing.assert_close(out["embedded"], (states[-1] + states[-2]) / 2 / 2 * mask)
    torch.testing.assert_close(out["hidden"], states[-1])
    assert out["masks"][0, :10].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # [CLS], [SEP] and pads off


def test_freeze_keeps_the_model_in_eval_without_grads():
    frozen = build_language_encoder(lang_cfg(FREEZE=True, PRETRAINED=False)).train()
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.model.training
    batch = frozen.tokenize(["a cat on a mat"])
    a, b = frozen(**batch)["hidden"], frozen(**batch)["hidden"]
    assert torch.equal(a, b) and not a.requires_grad  # no dropout, no graph
    trainable = build_language_encoder(lang_cfg(PRETRAINED=False)).train()
    torch.manual_seed(0)
    c = trainable(**batch)["hidden"]
    assert c.requires_grad and not torch.equal(c, trainable(**batch)["hidden"])  # dropout active


def test_configuration_errors_are_explicit():
    with pytest.raises(ValueError, match="HIDDEN_DIM=768.*hidden size is 384"):
        build_language_encoder(lang_cfg(HIDDEN_DIM=768, PRETRAINED=False))
    with pytest.raises(ValueError, match="MAX_QUERY_LEN=600"):
        build_language_encoder(lang_cfg(MAX_QUERY_LEN=600, PRETRAINED=False))
    with pytest.raises(ValueError, match="NUM_LAYERS=7"):
        build_language_encoder(lang_cfg(NUM_LAYERS=7, PRETRAINED=False))
    with pytest.raises(KeyError, match="NoSuchEncoder"):
        build_language_encoder(lang_cfg(ENCODER="NoSuchEncoder"))


def test_unreachable_pretrained_model_names_it_and_says_how_to_fix():
    cfg = lang_cfg(MODEL_NAME="glip-d2-tests/no-such-model", HIDDEN_DIM=768, TOKENIZER=EMBEDDED_MINILM)
    with pytest.raises(OSError, match=r"'glip-d2-tests/no-such-model'.*MODEL\.LANGUAGE\.MODEL_NAME to a local folder"):
        build_language_encoder(cfg)


def test_random_init_bert_base_is_offline_with_official_parameter_count():
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.LANGUAGE.PRETRAINED = False
    enc = build_language_encoder(cfg)
    assert round(sum(p.numel() for p in enc.parameters()) / 1e6, 2) == 108.89
    assert enc.model.config.num_hidden_layers == 12 and enc.hidden_dim == 768


def test_official_language_key_renaming():
    """The checkpoint converter's key map (the one official -> glip_d2 map) on text-encoder keys."""
    def r(key):
        return map_official_key(key, GLIP_T)  # (glip_d2 key, None) or (None, why it is dropped)

    # the ``module.`` prefix of a DDP-saved file is stripped before mapping
    key = "module.language_backbone.body.model.encoder.layer.11.output.dense.weight"
    stripped = official_state_dict({"model": {key: torch.zeros(1)}})
    assert list(stripped) == [key[len("module."):]]
    assert r(next(iter(stripped))) == ("language_encoder.model.encoder.layer.11.output.dense.weight", None)
    assert r("language_backbone.body.model.embeddings.word_embeddings.weight") == \
        ("language_encoder.model.embeddings.word_embeddings.weight", None)
    for dropped in ("language_backbone.body.model.embeddings.position_ids",
                    "language_backbone.body.model.pooler.dense.weight"):
        new, reason = r(dropped)
        assert new is None and reason, dropped  # dropped, with a reason (recomputed / unused)
    assert r("backbone.body.norm1.weight") == ("backbone.bottom_up.norm1.weight", None)  # not a text-encoder key


@requires_reference
def test_bert_base_reproduces_official_tokens_and_hidden_states():
    ref = load_reference()
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.LANGUAGE.PRETRAINED = False
    enc = build_language_encoder(cfg).eval()
    batch = enc.tokenize([ref["meta"]["caption"]])
    assert ref["meta"]["caption"] == CAPTION
    assert torch.equal(batch["input_ids"], ref["inputs"]["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["inputs"]["attention_mask"])

    state = {}
    for key, value in official_reference_weights("language_backbone.").items():
        new, _ = map_official_key(key, GLIP_T)
        if new is not None:
            state[new[len("language_encoder."):]] = value
    enc.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = enc(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(out["hidden"], ref["language"]["backbone_hidden"], rtol=0, atol=2e-5)
