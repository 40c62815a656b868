"""``GLIPv2Caption``: GLIP's model writing captions, GLIPv2's second understanding task (§3-§4).

No official code exists; the design follows the paper (the caption is the language stream of the same model, read
with a unidirectional mask, words predicted by an LM head) and every choice is stated here:

* **Causal text.** The text encoder and the tower's extra BERT layers run with a causal mask (token t sees tokens
  <= t). In each fusion block tokens still attend to every image position, but the image is *not* updated from the
  caption (``BiAttentionFusion.image_side`` / ``text_side``): an image position that read word t+1 would pass it
  back to token t in the next block. With that, a token's prediction does not change when later tokens do (exact,
  tested), and the image side depends on the image only.
* **Next-token prediction.** The fused text of the last block (``lang_out["hidden"]``) at position t predicts token
  t+1 through BERT's LM head (``LMPredictionHead``, untied from the input embeddings), trained by teacher forcing
  with cross-entropy (MODEL.CAPTION.LABEL_SMOOTHING optional) on every caption token and the closing [SEP]. The
  head lives under ``glipv2.mlm_head``, the key of GLIPv2's MLM head: a checkpoint pre-trained with MLM gives the
  captioner its head, a GLIP checkpoint leaves only it fresh (``GLIPCheckpointer`` lets ``glipv2.*`` start fresh).
* **Decoding** (``caption_decoding``): greedy (MODEL.CAPTION.BEAM_SIZE 1) or beam search with a length penalty,
  up to MODEL.CAPTION.MAX_LENGTH tokens. The image side of the tower runs once per image
  (``VLTower.caption_image_pass``); each step re-runs only the text side on the prefix (captions are short, so the
  text cost per step is small next to the image; beams of one image share its cached image keys without copies).
* The detection head stays (one checkpoint grounds and captions) but does not run; it and the image-update weights
  of the fusion get a zero-weighted term so DDP sees every parameter used.

Inference returns per input ``{"caption": str, "caption_score": float}`` (sum of log-probabilities).
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..caption_decoding import Caption, beam_search, greedy_search
from ..glipv2.mlm import LMPredictionHead
from .glip import GLIP

__all__ = ["GLIPv2Caption"]


@META_ARCH_REGISTRY.register()
class GLIPv2Caption(GLIP):
    """GLIP + a causal language stream and an LM head (module docstring)."""

    @configurable
    def __init__(self, *, lm_head: nn.Module, max_length: int = 32, label_smoothing: float = 0.0,
                 loss_weight: float = 1.0, beam_size: int = 1, length_penalty: float = 0.0, min_length: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        if self.glipv2 is not None:
            raise ValueError("GLIPv2Caption trains without GLIPv2's pre-training objectives: set "
                             "MODEL.GLIPV2.MLM.ENABLED and MODEL.GLIPV2.REGION_WORD.ENABLED to False")
        if max_length < 3:
            raise ValueError(f"MODEL.CAPTION.MAX_LENGTH must be >= 3 ([CLS], a word, [SEP]), got {max_length}")
        if max_length > self.language_encoder.model.config.max_position_embeddings:
            raise ValueError(f"MODEL.CAPTION.MAX_LENGTH {max_length} exceeds the text model's "
                             f"{self.language_encoder.model.config.max_position_embeddings} positions")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"MODEL.CAPTION.LABEL_SMOOTHING must lie in [0, 1), got {label_smoothing}")
        self.glipv2 = nn.ModuleDict({"mlm_head": lm_head})
        self.max_length = int(max_length)
        self.label_smoothing = float(label_smoothing)
        self.loss_weight = float(loss_weight)
        self.beam_size = int(beam_size)
        self.length_penalty = float(length_penalty)
        self.min_length = int(min_length)
        tok = self.language_encoder.tokenizer
        self._special = {"bos": tok.cls_token_id, "eos": tok.sep_token_id, "pad": tok.pad_token_id}
        if None in self._special.values():
            raise ValueError(f"captioning needs a tokenizer with [CLS], [SEP] and [PAD]; got {self._special}")
        self._banned = sorted({i for i in (tok.pad_token_id, tok.cls_token_id, tok.mask_token_id, tok.unk_token_id)
                               if i is not None})

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        c = cfg.MODEL.CAPTION
        ret.update(
            lm_head=LMPredictionHead(ret["language_encoder"].model.config),
            max_length=c.MAX_LENGTH,
            label_smoothing=c.LABEL_SMOOTHING,
            loss_weight=c.LOSS_WEIGHT,
            beam_size=c.BEAM_SIZE,
            length_penalty=c.LENGTH_PENALTY,
            min_length=c.MIN_LENGTH,
        )
        return ret

    @property
    def lm_head(self) -> nn.Module:
        return self.glipv2["mlm_head"]

    # ---- text ---------------------------------------------------------------------------------------------
    def tokenize_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [B, T], padded to the longest, cut at MODEL.CAPTION.MAX_LENGTH (the cut
        caption keeps its closing [SEP])."""
        for i, c in enumerate(captions):
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"caption {i} must be a non-empty string, got {c!r}")
        tokens = self.language_encoder.tokenizer(list(captions), padding="longest", truncation=True,
                                                 max_length=self.max_length, return_tensors="pt")
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)

    def caption_logits(self, image_keys, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B*k, T, V] of captions (k per image, image-major) given the image side's keys."""
        lang = dict(self.language_encoder(input_ids, attention_mask, causal=True))
        lang["input_ids"] = input_ids
        hidden = self.vl_tower.caption_text_pass(image_keys, lang)["hidden"]
        return self.lm_head(hidden)

    def image_keys(self, batched_inputs: list[dict]):
        """The tower's image side for the inputs' images (computed once per image, see the module docstring)."""
        images = self.preprocess_image(batched_inputs)
        return self.vl_tower.caption_image_pass(self.extract_features(images))

    # ---- training -----------------------------------------------------------------------------------------
    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        missing = [i for i, x in enumerate(batched_inputs) if "caption" not in x]
        if missing:
            raise ValueError(f"GLIPv2Caption training needs a 'caption' per input (CaptionDatasetMapper); inputs "
                             f"{missing} lack it")
        keys = self.image_keys(batched_inputs)
        input_ids, attention_mask = self.tokenize_captions([x["caption"] for x in batched_inputs])
        lang = dict(self.language_encoder(input_ids, attention_mask, causal=True))
        hidden = self.vl_tower.caption_text_pass(keys, lang)["hidden"][:, :-1]
        targets = input_ids[:, 1:]
        labelled = attention_mask[:, 1:].bool()
        logits = self.lm_head(hidden[labelled]).float()  # only the labelled positions: V is large
        loss = F.cross_entropy(logits, targets[labelled], label_smoothing=self.label_smoothing)
        idle = sum(p.sum() for p in self._idle_parameters())
        return {"loss_caption": loss * self.loss_weight + 0.0 * idle}

    def _idle_parameters(self) -> list[nn.Parameter]:
        params = self.vl_tower.caption_idle_parameters() + list(self.head.parameters())
        return [p for p in params if p.requires_grad]

    # ---- inference ----------------------------------------------------------------------------------------
    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True, *, beam_size: int | None = None,
                  max_length: int | None = None, length_penalty: float | None = None) -> list[dict]:
        """Per input ``{"caption", "caption_score"}``; the keyword arguments override MODEL.CAPTION's."""
        captions = self.generate(self.image_keys(batched_inputs), len(batched_inputs), beam_size=beam_size,
                                 max_length=max_length, length_penalty=length_penalty)
        tok = self.language_encoder.tokenizer
        return [{"caption": tok.decode(c.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True),
                 "caption_score": c.log_prob} for c in captions]

    @torch.no_grad()
    def generate(self, image_keys, num_images: int, *, beam_size: int | None = None, max_length: int | None = None,
                 length_penalty: float | None = None) -> list[Caption]:
        """Decode one caption per image from the image side's keys (greedy when the beam size is 1)."""
        beam_size = self.beam_size if beam_size is None else int(beam_size)
        max_length = self.max_length if max_length is None else int(max_length)
        length_penalty = self.length_penalty if length_penalty is None else float(length_penalty)
        pad = self._special["pad"]

        def step(ids: torch.Tensor) -> torch.Tensor:
            mask = (ids != pad).long()
            return F.log_softmax(self.caption_logits(image_keys, ids, mask)[:, -1].float(), dim=-1)

        common = dict(bos_id=self._special["bos"], eos_id=self._special["eos"], pad_id=pad, max_length=max_length,
                      min_length=min(self.min_length, max_length - 2), banned_ids=self._banned, device=self.device)
        if beam_size == 1:
            return greedy_search(step, num_images, **common)
        return beam_search(step, num_images, beam_size=beam_size, length_penalty=length_penalty, **common)
