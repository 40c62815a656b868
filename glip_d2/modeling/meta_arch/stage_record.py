"""The stages of one GLIP inference pass as a dict, keyed like the official reference run.

Filled by ``GLIP.stage_outputs()``; nothing here runs during ordinary inference.
"""

__all__ = ["stage_dict"]


def stage_dict(images, features, lang, lang_out, visual, outputs, anchors, dets) -> dict:
    """First-prompt stages: inputs, FPN, text features, tower output, head outputs, anchors, pre-/post-NMS."""

    def official(d):
        return {"boxes_xyxy": d["boxes"], "scores": d["scores"], "labels": d["labels"] + 1}

    return {
        "inputs": {
            "image_tensor_padded": images.tensor,
            "image_sizes": list(images.image_sizes),
            "input_ids": lang["input_ids"],
            "attention_mask": lang["masks"],
        },
        "backbone": {"fpn": list(features)},
        "language": {
            "backbone_hidden": lang["hidden"],
            "backbone_embedded": lang["embedded"],
            "masks": lang["masks"],
            "fused_hidden": lang_out["hidden"],
            "dot_product_proj_tokens": outputs["proj_tokens"],
        },
        "tower_visual": list(visual),
        "head": {
            "bbox_reg": outputs["box_regression"],
            "centerness": outputs["centerness"],
            "dot_product_logits": outputs["dot_product_logits"],
        },
        "anchors": anchors,
        "pre_nms": [official(d["pre_nms"]) for d in dets],
        "final_sorted": [official(d) for d in dets],
    }
