"""Which GLIP architecture a state dict holds, read from its keys and shapes alone.

The same description is computed for an official state dict (official names) and for a glip_d2 model (glip_d2
names), so "this checkpoint is GLIP-T(A) but the model is GLIP-T" can be said before any key is compared.
"""
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Architecture", "KNOWN_ARCHITECTURES", "OFFICIAL_NAMES", "GLIP_D2_NAMES", "detect_architecture"]


@dataclass(frozen=True)
class Architecture:
    """Geometry that decides whether two state dicts can correspond."""

    swin_embed_dim: int
    swin_depths: tuple[int, ...]
    fused: bool  # deep fusion blocks in the tower (all but GLIP-T(A))
    lang_layers_in_tower: int  # extra BERT layers inside the tower
    num_blocks: int  # VL-DyHead blocks
    lang_dim: int
    lang_num_layers: int  # layers of the text encoder

    @property
    def name(self) -> str:
        for name, arch in KNOWN_ARCHITECTURES.items():
            if arch == self:
                return name
        return "custom"

    def describe(self) -> str:
        depths = "-".join(str(d) for d in self.swin_depths)
        visual = f"Swin embed {self.swin_embed_dim}, depths {depths}" if self.swin_embed_dim else "no Swin backbone"
        fusion = f"deep fusion, {self.lang_layers_in_tower} tower BERT layers" if self.fused else "no fusion"
        return (
            f"{self.name} ({visual}; {self.num_blocks} DyHead blocks, "
            f"{fusion}; text encoder {self.lang_num_layers} layers x {self.lang_dim})"
        )


_T = dict(swin_embed_dim=96, swin_depths=(2, 2, 6, 2), lang_dim=768, lang_num_layers=12)
#: Official architectures: T(B), T(C) and GLIP-T share one architecture.
KNOWN_ARCHITECTURES = {
    "GLIP-T(A)": Architecture(fused=False, lang_layers_in_tower=0, num_blocks=6, **_T),
    "GLIP-T": Architecture(fused=True, lang_layers_in_tower=6, num_blocks=6, **_T),
    "GLIP-L": Architecture(
        swin_embed_dim=192, swin_depths=(2, 2, 18, 2), fused=True, lang_layers_in_tower=8, num_blocks=8,
        lang_dim=768, lang_num_layers=12,
    ),
}


@dataclass(frozen=True)
class _Names:
    """Where each part lives in one naming scheme."""

    swin: str
    text: str
    block: str  # regex; group 1 is the tower index
    fusion: str  # regex matching a fusion key of a tower entry
    lang_layer: str  # regex matching an extra-BERT-layer key
    blocks_per_index: int  # official fused towers interleave 3 modules per block


OFFICIAL_NAMES = _Names(
    swin="backbone.body.",
    text="language_backbone.body.model.",
    block=r"^rpn\.head\.dyhead_tower\.(\d+)\.",
    fusion=r"^rpn\.head\.dyhead_tower\.\d+\.b_attn\.",
    lang_layer=r"^rpn\.head\.dyhead_tower\.\d+\.attention\.self\.query\.weight$",
    blocks_per_index=0,  # decided by the presence of fusion (3 when fused, 1 otherwise)
)
GLIP_D2_NAMES = _Names(
    swin="backbone.bottom_up.",
    text="language_encoder.model.",
    block=r"^vl_tower\.blocks\.(\d+)\.",
    fusion=r"^vl_tower\.blocks\.\d+\.fusion\.",
    lang_layer=r"^vl_tower\.blocks\.\d+\.lang_layer\.attention\.self\.query\.weight$",
    blocks_per_index=1,
)


def _shape0(sd: Mapping, key: str, dim: int) -> int | None:
    t = sd.get(key)
    return None if t is None or len(t.shape) <= dim else int(t.shape[dim])


def detect_architecture(state_dict: Mapping, names: _Names = OFFICIAL_NAMES) -> Architecture:
    """Describe the architecture of ``state_dict`` (prefix-free keys) in naming scheme ``names``."""
    embed = _shape0(state_dict, names.swin + "patch_embed.proj.weight", 0) or 0
    depths = {}
    swin_re = re.compile(re.escape(names.swin) + r"layers\.(\d+)\.blocks\.(\d+)\.")
    text_re = re.compile(re.escape(names.text) + r"encoder\.layer\.(\d+)\.")
    block_re, fusion_re, lang_re = re.compile(names.block), re.compile(names.fusion), re.compile(names.lang_layer)
    text_layers, indices, fused, lang_layers = set(), set(), False, 0
    for key in state_dict:
        m = swin_re.match(key)
        if m:
            depths[int(m.group(1))] = max(depths.get(int(m.group(1)), 0), int(m.group(2)) + 1)
        m = text_re.match(key)
        if m:
            text_layers.add(int(m.group(1)))
        m = block_re.match(key)
        if m:
            indices.add(int(m.group(1)))
        fused = fused or bool(fusion_re.match(key))
        lang_layers += bool(lang_re.match(key))
    per_index = names.blocks_per_index or (3 if fused else 1)
    num_entries = max(indices) + 1 if indices else 0
    lang_dim = _shape0(state_dict, names.text + "embeddings.word_embeddings.weight", 1) or 0
    return Architecture(
        swin_embed_dim=embed,
        swin_depths=tuple(depths[i] for i in sorted(depths)),
        fused=fused,
        lang_layers_in_tower=lang_layers,
        num_blocks=-(-num_entries // per_index),
        lang_dim=lang_dim,
        lang_num_layers=len(text_layers),
    )
