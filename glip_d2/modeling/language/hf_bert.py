"""HF BERT text encoder as GLIP uses it: token features for the fusion tower and head."""
import contextlib
import logging
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from torch import nn

from ...tokenization import EMBEDDED_MINILM, build_tokenizer, resolve_language_model_name, tokenize_captions
from .build import LANGUAGE_ENCODER_REGISTRY

__all__ = ["BERT_BASE_UNCASED_CONFIG", "HFBertEncoder", "text_model_parameter_names"]

logger = logging.getLogger(__name__)

#: config.json of ``bert-base-uncased`` (the official GLIP text model), so its architecture is built without the hub
#: (the weights then come from a GLIP checkpoint). These are also ``transformers.BertConfig()``'s defaults.
BERT_BASE_UNCASED_CONFIG = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def text_model_parameter_names(name: str) -> list[str]:
    """Parameter names of the text model built for MODEL.LANGUAGE.MODEL_NAME ``name`` (relative to the encoder's
    ``.model``), from its architecture only: built on the meta device, nothing allocated or downloaded."""
    with torch.device("meta"):
        return [n for n, _ in _build_bert(name, pretrained=False).named_parameters()]


def _build_bert(name: str, pretrained: bool):
    """``BertModel(add_pooling_layer=False)`` with eager attention (the official numerics)."""
    from transformers import AutoConfig, BertConfig, BertModel

    path = resolve_language_model_name(name)
    if pretrained:
        try:
            return BertModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="eager")
        except OSError as e:
            raise OSError(
                f"Could not load the pretrained language model '{name}' (resolved to '{path}'): it is not a local "
                "folder and could not be downloaded from the Hugging Face hub (offline and not in the cache?). "
                "Download it once with internet access, or set MODEL.LANGUAGE.MODEL_NAME to a local folder "
                f"holding config.json + weights (e.g. '{EMBEDDED_MINILM}' for the bundled MiniLM-L6, with "
                "MODEL.LANGUAGE.HIDDEN_DIM 384), or set MODEL.LANGUAGE.PRETRAINED False for random weights."
            ) from e
    if name == "bert-base-uncased":
        config = BertConfig(**BERT_BASE_UNCASED_CONFIG)  # no download needed
    else:
        try:
            config = AutoConfig.from_pretrained(path)
        except OSError as e:
            raise OSError(
                f"Could not load the config of language model '{name}' (resolved to '{path}'); set "
                "MODEL.LANGUAGE.MODEL_NAME to a local folder with config.json."
            ) from e
    if config.model_type != "bert":
        raise ValueError(f"HFBertEncoder needs a BERT-family model, but '{name}' is of type '{config.model_type}'")
    config._attn_implementation = "eager"
    return BertModel(config, add_pooling_layer=False)


def _hf_causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Padding + causal mask in the form HF BERT takes as given: additive [B, 1, L, L] (transformers >= 5, where a
    4-D mask is used as-is), or 0/1 [B, L, L] (4.x, which extends a 3-D mask itself)."""
    import transformers

    length = attention_mask.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    allowed = (attention_mask.bool()[:, None, :] & lower) | eye  # [B, query, key]; a token always sees itself
    if int(transformers.__version__.split(".")[0]) < 5:
        return allowed.to(attention_mask.dtype)
    return (~allowed[:, None]).to(dtype) * torch.finfo(dtype).min


@LANGUAGE_ENCODER_REGISTRY.register()
class HFBertEncoder(nn.Module):
    """Tokenizer + HF ``BertModel``; ``forward`` returns ``hidden`` / ``embedded`` / ``masks`` (docs/architecture.md).

    ``hidden`` is the unmasked last layer (input of the fusion tower); ``embedded`` is the mean of the last
    NUM_LAYERS hidden states divided once more by NUM_LAYERS (as the official code does; a no-op for the
    official NUM_LAYERS = 1) with padded rows zeroed; ``masks`` is the attention mask, with [CLS]/[SEP]
    also zeroed when MASK_SPECIAL.
    """

    @configurable
    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer,
        hidden_dim: int,
        max_query_len: int = 256,
        pad_max: bool = True,
        num_layers: int = 1,
        freeze: bool = False,
        mask_special: bool = False,
    ):
        super().__init__()
        config = model.config
        if config.hidden_size != hidden_dim:
            raise ValueError(
                f"MODEL.LANGUAGE.HIDDEN_DIM={hidden_dim} but the language model's hidden size is "
                f"{config.hidden_size}; set MODEL.LANGUAGE.HIDDEN_DIM {config.hidden_size}"
            )
        if max_query_len > config.max_position_embeddings:
            raise ValueError(
                f"MODEL.LANGUAGE.MAX_QUERY_LEN={max_query_len} exceeds the model's "
                f"max_position_embeddings={config.max_position_embeddings}"
            )
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise ValueError(
                f"MODEL.LANGUAGE.NUM_LAYERS={num_layers} must be in [1, {config.num_hidden_layers}] for this model"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.hidden_dim = hidden_dim
        self.max_query_len = max_query_len
        self.pad_max = pad_max
        self.num_layers = num_layers
        self.freeze = freeze
        self.mask_special = mask_special
        self._special_ids = [i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id) if i is not None]
        if freeze:
            for p in self.model.parameters():
                p.requires_grad = False
            self.model.eval()

    @classmethod
    def from_config(cls, cfg):
        lang = cfg.MODEL.LANGUAGE
        return {
            "model": _build_bert(lang.MODEL_NAME, lang.PRETRAINED),
            "tokenizer": build_tokenizer(cfg),
            "hidden_dim": lang.HIDDEN_DIM,
            "max_query_len": lang.MAX_QUERY_LEN,
            "pad_max": lang.PAD_MAX,
            "num_layers": lang.NUM_LAYERS,
            "freeze": lang.FREEZE,
            "mask_special": lang.MASK_SPECIAL,
        }

    def train(self, mode: bool = True):
        """A frozen encoder stays in eval mode (no dropout), as the official model keeps it."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def tokenize(self, captions: Sequence[str], pad_max: bool | None = None) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask LongTensors [B, L] (CPU tensors); L = MAX_QUERY_LEN when padding to the
        maximum (``pad_max``, default PAD_MAX), else the longest caption's length."""
        pad_max = self.pad_max if pad_max is None else pad_max
        return tokenize_captions(self.tokenizer, captions, self.max_query_len, pad_max)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
    ) -> dict[str, torch.Tensor]:
        """``causal``: each token attends to itself and the tokens before it only (captioning), so a token's
        features do not change when later tokens do."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L]; got {tuple(input_ids.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
        grad_ctx = torch.no_grad() if self.freeze else contextlib.nullcontext()
        hf_mask = _hf_causal_mask(attention_mask, self.model.dtype) if causal else attention_mask
        with grad_ctx:
            out = self.model(
                input_ids=input_ids,
                attention_mask=hf_mask,
                token_type_ids=torch.zeros_like(input_ids),
                output_hidden_states=self.num_layers > 1,
                return_dict=True,
            )
        hidden = out.last_hidden_state
        if self.num_layers == 1:
            features = hidden
        else:
            features = torch.stack(out.hidden_states[-self.num_layers :], dim=1).mean(1) / self.num_layers
        embedded = features * attention_mask.unsqueeze(-1).to(features.dtype)
        masks = attention_mask
        if self.mask_special:
            special = torch.zeros_like(attention_mask, dtype=torch.bool)
            for token_id in self._special_ids:
                special |= input_ids == token_id
            masks = attention_mask * (~special).to(attention_mask.dtype)
        return {"hidden": hidden, "embedded": embedded, "masks": masks}
