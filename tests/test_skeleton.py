"""checkpoint.skeleton: weight-free builds under torch.device("meta") whose buffers are the real ones."""
import os

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

import glip_d2  # noqa: F401
from glip_d2.checkpoint.skeleton import build_model_uninitialized, build_skeleton, materialize
from glip_d2.engine.defaults import load_glip_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "quick_schedules", "glip_tiny_synthetic.yaml")


@pytest.fixture(scope="module")
def tiny():
    cfg = load_glip_cfg(TINY, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def test_skeleton_has_meta_weights_real_buffers_and_draws_no_random_numbers(tiny):
    cfg, real = tiny
    rng = torch.get_rng_state()
    skeleton = build_skeleton(cfg)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.is_meta for p in skeleton.parameters())
    assert [n for n, _ in skeleton.named_parameters()] == [n for n, _ in real.named_parameters()]
    expected = dict(real.named_buffers())
    buffers = dict(skeleton.named_buffers())
    assert buffers.keys() == expected.keys() and buffers  # anchors, pixel mean/std, BERT position ids, ...
    for name, b in buffers.items():
        assert not b.is_meta and torch.equal(b, expected[name]), name


def test_uninitialized_model_loaded_from_a_state_dict_equals_the_source(tiny):
    cfg, real = tiny
    model = build_model_uninitialized(cfg)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in real.parameters()]
    model.load_state_dict(real.state_dict())
    for (name, a), b in zip(model.state_dict().items(), real.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(model.named_buffers(), real.buffers()):  # non-persistent ones too
        assert torch.equal(a, b), name


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("table", torch.arange(4), persistent=False)


def test_materialize_keeps_real_values_and_refuses_lost_buffers():
    with torch.device("meta"):
        model = _Tiny()
    model.linear.bias = nn.Parameter(torch.tensor([1.0, 2.0]))  # a real parameter among meta ones
    with pytest.raises(RuntimeError, match="table"):
        materialize(model)  # built on meta: the non-persistent buffer's value is gone
    model.table = torch.arange(4)
    materialize(model)
    assert model.linear.weight.device.type == "cpu" and model.linear.weight.shape == (2, 3)
    assert torch.equal(model.linear.bias, torch.tensor([1.0, 2.0])) and torch.equal(model.table, torch.arange(4))
