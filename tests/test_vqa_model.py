"""GLIPv2VQA and its VQAHead / GroundedVQAHead: shapes, what the grounded head reads, the loss formula, learning on a fixed batch, the kept grounding loss,
inference outputs, GLIP checkpoints starting VQA fine-tuning, and configuration errors."""
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from glip_d2.checkpoint import GLIPCheckpointer
from glip_d2.data.datasets.synthetic_vqa import register_synthetic_vqa
from glip_d2.data.vqa_mapper import VQADatasetMapper
from glip_d2.engine.defaults import load_glip_cfg
from glip_d2.modeling.vl_heads import VL_HEAD_REGISTRY, GroundedVQAHead, VQAHead, dense_answer_targets
from glip_d2.modeling.vl_heads.grounded_vqa_head import region_evidence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "configs", "quick_schedules", "glipv2_tiny_vqa_synthetic.yaml")
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
         "INPUT.MAX_SIZE_TEST", "128", "INPUT.FLIP_PROB_TRAIN", "0.0"]


def test_head_shapes_pooling_and_loss_formula():
    assert VL_HEAD_REGISTRY.get("VQAHead") is VQAHead
    torch.manual_seed(0)
    head = VQAHead(input_dim=16, num_answers=5)
    assert head.mlp[0].out_features == 32 and isinstance(head.mlp[1], torch.nn.GELU)
    assert isinstance(head.mlp[2], torch.nn.LayerNorm)
    hidden, mask = torch.randn(2, 7, 16), torch.tensor([[1] * 4 + [0] * 3, [1] * 7])
    assert head(hidden, mask).shape == (2, 5)
    assert torch.allclose(head.pool(hidden, mask)[0], hidden[0, :4].mean(0))  # padding does not count
    cls = VQAHead(input_dim=16, num_answers=5, pooling="cls")
    assert torch.equal(cls.pool(hidden, mask), hidden[:, 0])
    targets = dense_answer_targets([torch.tensor([1, 3]), torch.tensor([], dtype=torch.long)],
                                   [torch.tensor([0.3, 1.0]), torch.tensor([])], 5)
    assert torch.allclose(targets, torch.tensor([[0, 0.3, 0, 1.0, 0], [0] * 5]))
    logits = torch.randn(2, 5)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 2  # sum over answers
    assert torch.allclose(head.losses(logits, targets)["loss_vqa"], expected)
    with pytest.raises(ValueError, match="outside the 5-answer vocabulary"):
        dense_answer_targets([torch.tensor([5])], [torch.tensor([1.0])], 5)
    with pytest.raises(ValueError, match="POOLING"):
        VQAHead(input_dim=16, num_answers=5, pooling="max")


def test_head_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    head = VQAHead(input_dim=16, num_answers=6, dropout=0.0)
    hidden, mask = torch.randn(8, 5, 16), torch.ones(8, 5)
    targets = dense_answer_targets([torch.tensor([i % 6]) for i in range(8)], [torch.tensor([1.0])] * 8, 6)
    opt = torch.optim.AdamW(head.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss = head.losses(head(hidden, mask), targets)["loss_vqa"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses


def _regions(batch=2, tokens=5, channels=8, sizes=((4, 4), (2, 2)), seed=0):
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(batch, channels, h, w, generator=g) for h, w in sizes]
    logits = [torch.randn(batch, h * w, tokens, generator=g) for h, w in sizes]
    centerness = [torch.randn(batch, 1, h, w, generator=g) for h, w in sizes]
    return {"logits": logits, "centerness": centerness, "features": features}


def test_region_evidence_reads_the_region_a_token_grounds_to():
    regions = _regions()
    # token 2 of image 0 grounds sharply to location (1, 3) of level 0 (row-major index 7); token 4 to level 1's (1, 0)
    regions["logits"][0][0, 7, 2] = 60.0
    regions["logits"][1][0, 2, 4] = 60.0
    pooled, evidence = region_evidence(regions["logits"], regions["centerness"], regions["features"])
    assert pooled.shape == (2, 5, 8) and evidence.shape == (2, 5, 2)
    assert torch.allclose(pooled[0, 2], regions["features"][0][0, :, 1, 3], atol=1e-4)
    assert torch.allclose(pooled[0, 4], regions["features"][1][0, :, 1, 0], atol=1e-4)
    assert float(evidence[0, 2, 0]) == 60.0  # the best logit over every level
    # the soft count grows with the number of regions that score the token
    more = _regions()
    more["logits"][0][1, :, 3] = 10.0
    less = _regions()
    less["logits"][0][1, :, 3] = -10.0
    count = lambda r: float(region_evidence(r["logits"], r["centerness"], r["features"])[1][1, 3, 1])  # noqa: E731
    assert count(more) > count(less) + 1.0
    with pytest.raises(ValueError, match="regions disagree"):
        region_evidence(regions["logits"][:1], regions["centerness"], regions["features"])


def test_grounded_head_answers_from_the_grounded_regions():
    assert VL_HEAD_REGISTRY.get("GroundedVQAHead") is GroundedVQAHead and GroundedVQAHead.reads_regions
    torch.manual_seed(0)
    head = GroundedVQAHead(input_dim=16, region_dim=8, num_answers=4, dropout=0.0).eval()
    hidden, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    regions = _regions()
    logits = head(hidden, mask, regions=regions)
    assert logits.shape == (2, 4)
    # padded tokens are left out: changing what they ground to changes nothing
    padded = _regions()
    padded["logits"][0][0, :, 3:] += 5.0
    assert torch.allclose(head(hidden, mask, regions=padded)[0], logits[0], atol=1e-5)
    # the same question about another picture gets another answer distribution
    assert not torch.allclose(head(hidden, mask, regions=_regions(seed=1)), logits, atol=1e-3)
    with pytest.raises(ValueError, match="needs the grounding head's outputs"):
        head(hidden, mask)
    # learns answers that only the picture tells: the question is the same for every sample
    torch.manual_seed(0)
    head = GroundedVQAHead(input_dim=16, region_dim=8, num_answers=2, dropout=0.0)
    samples = [_regions(batch=1, seed=s) for s in range(8)]
    answers = [int(r["features"][0][0, 0].mean() > 0) for r in samples]  # "what is in the picture?" 0 or 1
    batch = {k: [torch.cat([r[k][lvl] for r in samples]) for lvl in range(2)] for k in samples[0]}
    targets = F.one_hot(torch.tensor(answers), 2).float()
    question = torch.randn(1, 5, 16).expand(8, 5, 16)
    opt = torch.optim.AdamW(head.parameters(), 1e-2)
    for _ in range(60):
        loss = head.losses(head(question, torch.ones(8, 5), regions=batch), targets)["loss_vqa"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    predicted = head(question, torch.ones(8, 5), regions=batch).argmax(1).tolist()
    assert predicted == answers and len(set(answers)) == 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_vqa_model"))
    register_synthetic_vqa(root, num_train=6, num_val=2, num_test=2, seed=0, min_answer_count=1)
    cfg = load_glip_cfg(QUICK, ["DATASETS.SYNTHETIC_VQA.ROOT", root, "DATASETS.SYNTHETIC_VQA.MIN_ANSWER_COUNT", "1",
                                "MODEL.VQA.KEEP_DETECTION_LOSS", "True", *SMALL])
    torch.manual_seed(0)
    model = build_model(cfg)
    records = DatasetCatalog.get("synthetic_vqa_train")
    return cfg, model, records


def test_model_learns_a_fixed_batch_and_keeps_the_grounding_loss(setup):
    cfg, model, records = setup
    assert model.vqa_head.num_answers == len(MetadataCatalog.get("synthetic_vqa_train").answer_vocab)
    mapper = VQADatasetMapper(cfg, is_train=True)
    grounded = [r for r in records if r.get("annotations")][:2]
    plain = [dict(r) for r in records if not r.get("annotations")][:1] or [
        {k: v for k, v in records[0].items() if k != "annotations"}]
    batch = [mapper(r) for r in grounded + plain]
    assert all("instances" in x for x in batch[:2]) and "instances" not in batch[2]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    history = []
    with EventStorage():
        for _ in range(6):
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            history.append({k: float(v) for k, v in losses.items()})
    assert set(history[0]) == {"loss_vqa", "loss_dot_product_token", "loss_reg", "loss_centerness"}
    assert history[-1]["loss_vqa"] < 0.5 * history[0]["loss_vqa"], history
    # every parameter of the detector head gets a gradient through the kept loss
    assert model.head.bbox_pred.weight.grad is not None and model.vqa_head.mlp[0].weight.grad is not None
    # without boxes in the batch: VQA only, the detector head still in the graph (DDP-safe)
    with EventStorage():
        losses = model([mapper(plain[0])])
    assert set(losses) == {"loss_vqa"}
    losses["loss_vqa"].backward()
    assert model.head.bbox_pred.weight.grad is not None


def test_inference_outputs(setup):
    cfg, model, records = setup
    mapper = VQADatasetMapper(cfg, is_train=False)
    grounded = next(r for r in records if r.get("annotations"))
    inputs = [mapper(grounded), mapper({k: v for k, v in records[0].items() if k != "annotations"})]
    model.eval()
    with torch.no_grad():
        out = model(inputs)
        assert [sorted(o) for o in out] == [["vqa_scores"], ["vqa_scores"]]
        scores = out[0]["vqa_scores"]
        assert scores.shape == (model.vqa_head.num_answers,) and 0 <= float(scores.min()) <= float(scores.max()) <= 1
        model.return_instances = True
        try:
            out = model(inputs)
        finally:
            model.return_instances = False
    assert "instances" in out[0] and "instances" not in out[1]  # only a prompt with a positive map gets boxes
    inst = out[0]["instances"]
    assert inst.image_size == (grounded["height"], grounded["width"]) and inst.has("pred_phrases")


def test_glip_checkpoint_starts_vqa_with_only_the_head_fresh(setup, tmp_path):
    cfg, model, _ = setup
    glip_cfg = cfg.clone()
    glip_cfg.defrost()
    glip_cfg.MODEL.META_ARCHITECTURE = "GLIP"
    glip = build_model(glip_cfg)
    path = str(tmp_path / "glip.pth")
    torch.save({"model": glip.state_dict()}, path)
    vqa = build_model(cfg)
    GLIPCheckpointer(vqa, strict=True).load(path)  # strict: any other missing key would raise
    assert torch.equal(vqa.head.bbox_pred.weight, glip.head.bbox_pred.weight)
    assert all(k.startswith("glipv2.vqa_head.") for k in set(vqa.state_dict()) - set(glip.state_dict()))


def test_configuration_errors(setup):
    cfg, _, _ = setup
    bad = cfg.clone()
    bad.defrost()
    bad.MODEL.GLIPV2.MLM.ENABLED = True
    with pytest.raises(ValueError, match="without GLIPv2's pre-training objectives"):
        build_model(bad)
    bad = cfg.clone()
    bad.defrost()
    bad.MODEL.VQA.ANSWER_VOCAB_DATASET = "no_such_vqa_set"
    with pytest.raises(ValueError, match="MODEL.VQA.NUM_ANSWERS"):
        build_model(bad)
    bad.MODEL.VQA.NUM_ANSWERS = 7
    assert build_model(bad).vqa_head.num_answers == 7
