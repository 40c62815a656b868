"""CUDA runs agree with CPU runs, and training steps (fp32, bf16 and fp16 autocast) work on a GPU.

The CPU path is tied to the official model by test_reference_fidelity.py; here the same GLIP-T(C) weights run on
both devices (TF32 off, so float32 means float32) and every stage must agree to float32 noise, which covers the
CUDA kernels the CPU never runs (torchvision's CUDA deformable conv with the official offset reuse, cuDNN, NMS).
Skipped without a GPU; run on a GPU machine with ``pytest tests/test_cuda.py -s`` (prints the differences).
"""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import glip_d2
from glip_d2 import model_zoo
from glip_d2.data.datasets.synthetic import render_sample
from glip_d2.data.prompts import vocabulary_prompt
from glip_d2.data.tokens import encode_prompt

GPU = os.environ.get("GLIP_D2_TEST_GPU", "cuda")  # "cpu" dry-runs this file without a GPU (CPU against CPU)
pytestmark = [
    pytest.mark.skipif(GPU == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.slow,
]
REPO_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quick_schedules",
                         "glip_tiny_synthetic.yaml")


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _image(seed=0):
    import numpy as np

    image, _ = render_sample(np.random.default_rng(seed))
    return torch.as_tensor(image.transpose(2, 0, 1).copy())


def _rel(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _levels(a, b) -> float:
    return max(_rel(x, y) for x, y in zip(a, b))


def test_glip_t_inference_on_cuda_matches_cpu():
    cfg = model_zoo.get_config("GLIP-T_C", trained=False)
    cfg.MODEL.LANGUAGE.PRETRAINED = False
    cfg.MODEL.LANGUAGE.TOKENIZER = "embedded-minilm"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # random weights score ~0.01: keep candidates so that NMS runs too
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    names = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    prompt = encode_prompt(vocabulary_prompt(names), model.language_encoder.tokenizer,
                           model.language_encoder.max_query_len)
    image = _image()
    h, w = image.shape[-2:]
    inputs = [dict(prompt, image=image, height=2 * h, width=2 * w)]
    with torch.no_grad():
        with model.stage_outputs() as cpu:
            cpu_out = model.inference(inputs)
        model.to(GPU)
        with model.stage_outputs() as gpu:
            gpu_out = model.inference(inputs)
    diffs = {
        "fpn": _levels(gpu["backbone"]["fpn"], cpu["backbone"]["fpn"]),
        "language": _rel(gpu["language"]["backbone_hidden"], cpu["language"]["backbone_hidden"]),
        "fused text": _rel(gpu["language"]["fused_hidden"], cpu["language"]["fused_hidden"]),
        "tower visual": _levels(gpu["tower_visual"], cpu["tower_visual"]),
        "bbox_reg": _levels(gpu["head"]["bbox_reg"], cpu["head"]["bbox_reg"]),
        "centerness": _levels(gpu["head"]["centerness"], cpu["head"]["centerness"]),
        "dot_product_logits": _levels(gpu["head"]["dot_product_logits"], cpu["head"]["dot_product_logits"]),
    }
    c, g = cpu_out[0]["instances"], gpu_out[0]["instances"].to("cpu")
    k = min(len(c), len(g), 50)
    top_c, top_g = c.scores.sort(descending=True).values[:k], g.scores.sort(descending=True).values[:k]
    print("\nCUDA vs CPU, max |diff| / max |cpu| per stage:")
    for name, d in diffs.items():
        print(f"  {name:<20} {d:.2e}")
    print(f"  detections cpu {len(c)} cuda {len(g)}; top-{k} scores max |diff| "
          f"{(top_c - top_g).abs().max().item() if k else 0.0:.2e}")
    for name, d in diffs.items():
        assert d < 2e-4, f"{name}: CUDA differs from CPU by {d:.2e} (relative)"
    assert abs(len(c) - len(g)) <= 1 and k > 0
    torch.testing.assert_close(top_g, top_c, rtol=0, atol=1e-4)


def _tiny_training_batch(model, n_images=2, n_objects=4, seed=0):
    """Synthetic images with random boxes grounded to random names of a vocabulary prompt."""
    from glip_d2.data.datasets.synthetic import CATEGORY_NAMES

    prompt = encode_prompt(vocabulary_prompt(list(CATEGORY_NAMES)), model.language_encoder.tokenizer,
                           model.language_encoder.max_query_len)
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n_images):
        image = _image(seed + i)
        h, w = image.shape[-2:]
        rows = torch.randint(0, len(CATEGORY_NAMES), (n_objects,), generator=g)
        xy = torch.rand(n_objects, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.15 + 0.2 * torch.rand(n_objects, 2, generator=g)) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = rows
        inst.gt_positive_map = prompt["positive_map"][rows].clone()
        batch.append(dict(prompt, image=image, instances=inst, height=h, width=w))
    return batch


def _tiny_model(device):
    cfg = get_cfg()
    glip_d2.add_glip_config(cfg)
    cfg.merge_from_file(REPO_TINY)
    cfg.MODEL.DEVICE = device
    torch.manual_seed(0)
    model = build_model(cfg).train()
    for m in model.modules():  # deterministic losses: no dropout, so CPU and CUDA see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def test_training_losses_on_cuda_match_cpu_and_amp_trains():
    cpu_model = _tiny_model("cpu")
    batch = _tiny_training_batch(cpu_model)
    with EventStorage(0):
        cpu_losses = {k: v.item() for k, v in cpu_model(batch).items()}
        model = _tiny_model(GPU)
        model.load_state_dict(cpu_model.state_dict())
        gpu_losses = {k: v.item() for k, v in model(batch).items()}
        print("\nlosses cpu", cpu_losses, "\nlosses cuda", gpu_losses)
        for k in cpu_losses:
            assert abs(gpu_losses[k] - cpu_losses[k]) <= 1e-3 * max(1.0, abs(cpu_losses[k])), k

        for dtype in (torch.bfloat16, torch.float16):
            model.load_state_dict(cpu_model.state_dict())
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and GPU == "cuda")
            history = []
            for _ in range(30):  # overfit the one batch
                with torch.autocast(GPU, dtype=dtype):
                    losses = model(batch)
                total = sum(losses.values())
                assert torch.isfinite(total), (dtype, {k: v.item() for k, v in losses.items()})
                opt.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.step(opt)
                scaler.update()
                history.append(total.item())
            print(f"{dtype}: total loss {history[0]:.3f} -> {history[-1]:.3f}")
            assert abs(history[0] - sum(cpu_losses.values())) < 0.05 * sum(cpu_losses.values())
            assert history[-1] < 0.7 * history[0], (dtype, history)
