"""Offline, with only GLIP-T's official file in the local weights folder: the text encoder's weights come from the
checkpoint, so bert-base-uncased is built from its architecture and never downloaded (make demo, GLIPPredictor,
train_net.py --eval-only, fine-tuning). A checkpoint without text weights still asks for the pretrained model.

The GLIP-T file is official-format: every key of official_keys/glip_T_C.tsv (GLIP-T has GLIP-T(C)'s architecture;
where the lists are looked for: reference_data.py) under ``module.``, each a constant tensor stored with stride 0
(0.3 MB on disk instead of 0.9 GB, written and read in milliseconds): zeros, and a score bias that keeps every
region below the inference threshold. A loaded model holding exactly these values shows that every weight came from
the file. The hub is offline, any network connection or hub download fails the test, and the pretrained-model
loader records each call (it reads an empty cache, so it fails as on a fresh machine).
"""
import logging
import os
import socket
import subprocess
import sys
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
from reference_data import official_key_list, requires_official_keys

import glip_d2  # noqa: F401
from glip_d2 import model_zoo
from glip_d2.checkpoint import (
    UnsafeCheckpointError,
    WeightsNotAvailableError,
    checkpoint_provides_text_encoder,
    checkpoint_text_encoder_keys,
    resolve_text_pretrained,
)
from glip_d2.engine.defaults import load_glip_cfg
from glip_d2.modeling.language.hf_bert import BERT_BASE_UNCASED_CONFIG, text_model_parameter_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "demo"))
import make_demo  # noqa: E402  demo/make_demo.py

import train_net  # noqa: E402

GLIP_T = model_zoo.get_entry("GLIP-T")
GLIP_T_CONFIG = model_zoo.get_config_file("GLIP-T")
#: GLIP-T at a small input size: the same code paths at a fraction of the CPU time of 800 px.
SMALL_INPUT = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224",
               "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "224"]
DECISION_LOGGER = "glip_d2.checkpoint.weights_content"


#: The fake file's score bias: no region scores above the inference threshold (0.05), so post-processing has
#: nothing to sort (with all logits 0, every anchor and token would be a candidate and NMS alone takes a minute).
BIAS0 = -10.0


def official_glip_t(with_text: bool = True) -> dict:
    """A released-file-like GLIP-T checkpoint of zeros (``rpn.head.bias0`` = BIAS0), stride-0 tensors (0.3 MB on
    disk); ``with_text=False`` drops the text encoder (``language_backbone.*``)."""
    model = OrderedDict()
    for key, shape, dtype in official_key_list("T_C"):
        if with_text or not key.startswith("language_backbone."):
            value = BIAS0 if key == "rpn.head.bias0" else 0
            model["module." + key] = torch.full((), value, dtype=dtype).expand(shape)
    return {"model": model, "iteration": 0}


@pytest.fixture(scope="module")
def weights_dirs(tmp_path_factory):
    """Two local weights folders, each with a file of GLIP-T's zoo name: the official one, and one without text."""
    full, no_text = tmp_path_factory.mktemp("weights"), tmp_path_factory.mktemp("weights_no_text")
    torch.save(official_glip_t(), full / GLIP_T.hf_filename)
    torch.save(official_glip_t(with_text=False), no_text / GLIP_T.hf_filename)
    return {"full": full, "no_text": no_text}


class Hub:
    """What the code under test asked of the network: connections, hub downloads, pretrained-model loads."""

    def __init__(self):
        self.connections, self.downloads, self.pretrained = [], [], []

    def assert_untouched(self):
        assert self.connections == [], f"network connections attempted: {self.connections}"
        assert self.downloads == [], f"hub downloads attempted: {self.downloads}"
        assert self.pretrained == [], f"pretrained text model requested: {self.pretrained}"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Hub offline (env), every socket connection refused and recorded, every download that is not a cache lookup
    refused and recorded, ``BertModel.from_pretrained`` recorded and pointed at an empty cache."""
    import huggingface_hub
    import huggingface_hub.file_download
    import transformers.utils.hub
    from transformers import BertModel

    record = Hub()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def guard_socket(real):
        def connect(sock, address, *args, **kwargs):
            if sock.family not in (socket.AF_INET, socket.AF_INET6):  # local (data-loader workers' AF_UNIX)
                return real(sock, address, *args, **kwargs)
            record.connections.append(address)
            raise OSError(f"test: network connection to {address} refused")

        return connect

    monkeypatch.setattr(socket.socket, "connect", guard_socket(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard_socket(socket.socket.connect_ex))

    for module in (huggingface_hub, huggingface_hub.file_download, transformers.utils.hub):
        for name in ("hf_hub_download", "snapshot_download"):
            real = getattr(module, name, None)
            if real is None:
                continue

            def guarded(*args, _real=real, _name=name, **kwargs):
                if not kwargs.get("local_files_only"):
                    record.downloads.append((_name, args, kwargs.get("filename")))
                    raise OSError(f"test: hub download refused: {_name}{args}")
                return _real(*args, **kwargs)

            monkeypatch.setattr(module, name, guarded)

    real_from_pretrained = BertModel.from_pretrained
    empty_cache = tmp_path / "empty_hf_cache"

    def from_pretrained(name, *args, **kwargs):
        record.pretrained.append(str(name))
        return real_from_pretrained(name, *args, **{**kwargs, "cache_dir": str(empty_cache)})

    monkeypatch.setattr(BertModel, "from_pretrained", from_pretrained)
    return record


@pytest.fixture
def decisions():
    """Messages of the text-encoder decision logger (one line per model built)."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger(DECISION_LOGGER)
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def assert_loaded_from_the_file(model):
    """Every parameter holds the fake file's value (0; BIAS0 for the score bias), not an initialiser's."""
    params = dict(model.named_parameters())
    assert len(params) > 700
    wrong = [n for n, p in params.items() if not (p.detach() == (BIAS0 if n == "head.bias0" else 0)).all()]
    assert wrong == [], f"{len(wrong)} parameters not loaded from the file, e.g. {wrong[:3]}"


def not_downloading(path) -> str:
    return f"text encoder weights come from {path}: not downloading bert-base-uncased"


def test_the_hub_guard_refuses_and_records(hub):
    """The guard itself: a connection and a download are refused and recorded (else the tests below prove nothing)."""
    import huggingface_hub

    with pytest.raises(OSError, match="refused"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with pytest.raises(OSError, match="refused"):
        huggingface_hub.hf_hub_download("bert-base-uncased", "config.json")
    assert hub.connections == [("127.0.0.1", 9)] and len(hub.downloads) == 1
    hub.connections.clear()
    hub.downloads.clear()


# ---------------------------------------------------------------------------------------------- the decision
def test_bert_base_uncased_architecture_is_built_without_the_hub():
    from transformers import BertConfig

    assert BERT_BASE_UNCASED_CONFIG == {k: getattr(BertConfig(), k) for k in BERT_BASE_UNCASED_CONFIG}
    names = text_model_parameter_names("bert-base-uncased")  # on the meta device: nothing allocated
    assert len(names) == 197 and "embeddings.word_embeddings.weight" in names and "pooler.dense.weight" not in names


@requires_official_keys
def test_the_files_keys_decide_not_its_name(weights_dirs, tmp_path, monkeypatch):
    expected = text_model_parameter_names("bert-base-uncased")
    official = weights_dirs["full"] / GLIP_T.hf_filename
    assert set(expected) <= checkpoint_text_encoder_keys(str(official))
    assert checkpoint_provides_text_encoder(str(official), expected)
    assert checkpoint_provides_text_encoder(str(official))  # without the expected names: embeddings + layers
    # same zoo file name, no text encoder inside
    assert not checkpoint_provides_text_encoder(str(weights_dirs["no_text"] / GLIP_T.hf_filename), expected)

    # glip_d2 names, any file name: a full model provides it; one missing layer tensor does not
    glip_d2_file = tmp_path / "backbone_only.pth"
    state = {"backbone.bottom_up.stem.weight": torch.zeros(1)}
    state.update({f"language_encoder.model.{n}": torch.zeros(1) for n in expected})
    torch.save({"model": state, "iteration": 3}, glip_d2_file)
    assert checkpoint_provides_text_encoder(str(glip_d2_file), expected)
    del state["language_encoder.model.encoder.layer.11.output.dense.weight"]
    torch.save({"model": state}, glip_d2_file)
    assert not checkpoint_provides_text_encoder(str(glip_d2_file), expected)

    # read safely and cheaply: weights-only, memory-mapped (the tensors' bytes are not read)
    from glip_d2.checkpoint import weights_content

    calls = []
    real = weights_content.load_checkpoint_file
    monkeypatch.setattr(weights_content, "load_checkpoint_file", lambda p, **k: calls.append(k) or real(p, **k))
    checkpoint_text_encoder_keys(str(official))
    assert calls == [{"mmap": True}]

    class RunsCode:
        def __reduce__(self):
            return (print, ("executed",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": {"language_encoder.model.x": RunsCode()}}, evil)
    with pytest.raises(UnsafeCheckpointError):
        checkpoint_provides_text_encoder(str(evil))


@requires_official_keys
def test_resolve_text_pretrained_clones_the_config_and_says_which_happened(
    weights_dirs, monkeypatch, hub, decisions
):
    monkeypatch.setenv("GLIP_D2_WEIGHTS_DIR", str(weights_dirs["full"]))
    cfg = load_glip_cfg(GLIP_T_CONFIG, ["MODEL.WEIGHTS", "glip_d2://GLIP-T"])
    resolved = resolve_text_pretrained(cfg)
    assert resolved is not cfg and resolved.is_frozen() and resolved.MODEL.LANGUAGE.PRETRAINED is False
    assert cfg.MODEL.LANGUAGE.PRETRAINED is True  # the caller's config is untouched
    assert decisions == [not_downloading(weights_dirs["full"] / GLIP_T.hf_filename)]

    decisions.clear()
    off = load_glip_cfg(GLIP_T_CONFIG, ["MODEL.WEIGHTS", "glip_d2://GLIP-T", "MODEL.LANGUAGE.PRETRAINED", "False"])
    assert resolve_text_pretrained(off) is off and decisions == []  # nothing to download, nothing to decide
    scratch = load_glip_cfg(GLIP_T_CONFIG)
    assert resolve_text_pretrained(scratch) is scratch and decisions == ["loading pretrained bert-base-uncased"]

    decisions.clear()
    no_text = str(weights_dirs["no_text"] / GLIP_T.hf_filename)
    assert resolve_text_pretrained(cfg, weights=no_text) is cfg
    assert decisions == [f"loading pretrained bert-base-uncased ({no_text} has no complete text-encoder weights)"]

    # a zoo file that is not available offline: the checkpointer's error, before the model is built
    with pytest.raises(WeightsNotAvailableError, match="glip_large_model.pth"):
        resolve_text_pretrained(load_glip_cfg(GLIP_T_CONFIG, ["MODEL.WEIGHTS", "glip_d2://GLIP-L"]))
    hub.assert_untouched()


# --------------------------------------------------------------------------------- offline, end to end
@requires_official_keys
@pytest.mark.slow  # 25-35 s on 2 shared CPU cores
def test_make_demo_draws_glip_t_offline(weights_dirs, monkeypatch, hub, decisions, tmp_path):
    """``make demo``'s GLIP-T branch (chosen because the file is cached) grounds its prompt in the Grace Hopper
    photo and writes the picture, without the network (at 160 px here; ~80 s at the default 800 px)."""
    import matplotlib.cbook

    monkeypatch.setenv("GLIP_D2_WEIGHTS_DIR", str(weights_dirs["full"]))
    monkeypatch.chdir(REPO)  # make_demo changes into the repository; restored afterwards
    out = tmp_path / "demo.png"
    written = make_demo.main(["--output", str(out), "--opts", *SMALL_INPUT])
    assert os.path.samefile(written, out)
    photo = cv2.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    picture = cv2.imread(str(out))
    scale = picture.shape[0] // photo.shape[0]  # small pictures are enlarged by an integer factor
    assert scale >= 1 and picture.shape == (photo.shape[0] * scale, photo.shape[1] * scale, 3)
    assert decisions == [not_downloading(weights_dirs["full"] / GLIP_T.hf_filename)]
    hub.assert_untouched()


@requires_official_keys
@pytest.mark.slow  # 30-50 s on 2 shared CPU cores
def test_predictor_and_eval_only_load_glip_t_offline(weights_dirs, monkeypatch, hub, decisions, tmp_path):
    from glip_d2.engine.predictor import GLIPPredictor

    monkeypatch.setenv("GLIP_D2_WEIGHTS_DIR", str(weights_dirs["full"]))
    official = weights_dirs["full"] / GLIP_T.hf_filename
    predictor = GLIPPredictor(load_glip_cfg(GLIP_T_CONFIG, ["MODEL.WEIGHTS", "glip_d2://GLIP-T", *SMALL_INPUT]))
    assert_loaded_from_the_file(predictor.model)  # every weight, the text encoder's included, came from the file
    assert predictor.tokenizer.vocab_size == BERT_BASE_UNCASED_CONFIG["vocab_size"]
    instances = predictor(np.full((60, 80, 3), 127, np.uint8), "person. tie")
    assert instances.image_size == (60, 80)
    assert decisions == [not_downloading(official)]
    del predictor

    # train_net.py --eval-only, in process, on one synthetic picture
    decisions.clear()
    args = train_net.parse_args([
        "--config-file", GLIP_T_CONFIG, "--eval-only", "MODEL.WEIGHTS", str(official), *SMALL_INPUT,
        "OUTPUT_DIR", str(tmp_path / "eval"), "DATASETS.TEST", '("synthetic_val",)', "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.SYNTHETIC.ROOT", str(tmp_path / "synthetic"), "DATASETS.SYNTHETIC.NUM_TRAIN", "1",
        "DATASETS.SYNTHETIC.NUM_VAL", "1", "DATASETS.SYNTHETIC.NUM_TEST", "1",
    ])
    results = train_net.main(args)
    assert "AP" in results["bbox"]  # detectron2 returns one dataset's results unnested
    assert decisions == [not_downloading(official)]
    hub.assert_untouched()


@requires_official_keys
@pytest.mark.slow  # 60-85 s on 2 shared CPU cores (one GLIP-T training step)
def test_fine_tuning_from_the_official_file_offline(weights_dirs, hub, decisions, tmp_path):
    """train_net.py's training path (GLIPTrainer + resume_or_load) with MODEL.WEIGHTS the official file: built and
    loaded offline, and one training step runs."""
    from detectron2.utils.events import EventStorage

    from glip_d2.engine import GLIPTrainer

    official = weights_dirs["full"] / GLIP_T.hf_filename
    cfg = load_glip_cfg(GLIP_T_CONFIG, [
        "MODEL.WEIGHTS", str(official), *SMALL_INPUT, "OUTPUT_DIR", str(tmp_path / "train"),
        "DATASETS.TRAIN", '("synthetic_train",)', "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "1",
        "SOLVER.AMP.ENABLED", "False",  # the config's fp16 autocast is for GPUs: on CPU it is 50x slower
        "DATALOADER.NUM_WORKERS", "0", "DATASETS.SYNTHETIC.ROOT", str(tmp_path / "synthetic"),
        "DATASETS.SYNTHETIC.NUM_TRAIN", "2", "DATASETS.SYNTHETIC.NUM_VAL", "1", "DATASETS.SYNTHETIC.NUM_TEST", "1",
    ])
    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=False)
    assert_loaded_from_the_file(trainer.model)
    assert decisions == [not_downloading(official)]
    language = dict(trainer.model.named_parameters())["language_encoder.model.embeddings.word_embeddings.weight"]
    assert language.requires_grad  # fine-tuned, as officially (MODEL.LANGUAGE.FREEZE False)
    with EventStorage(0):
        trainer._trainer.run_step()
    assert torch.isfinite(language).all()
    hub.assert_untouched()


# ------------------------------------------------------------------------------ without text weights
@requires_official_keys
def test_checkpoint_without_text_weights_still_asks_for_pretrained_bert(weights_dirs, monkeypatch, hub, decisions):
    from glip_d2.engine.predictor import GLIPPredictor

    monkeypatch.setenv("GLIP_D2_WEIGHTS_DIR", str(weights_dirs["no_text"]))
    with pytest.raises(OSError, match="Could not load the pretrained language model 'bert-base-uncased'"):
        GLIPPredictor(load_glip_cfg(GLIP_T_CONFIG, ["MODEL.WEIGHTS", "glip_d2://GLIP-T", *SMALL_INPUT]))
    assert hub.pretrained == ["bert-base-uncased"] and hub.connections == []
    path = weights_dirs["no_text"] / GLIP_T.hf_filename
    assert decisions == [f"loading pretrained bert-base-uncased ({path} has no complete text-encoder weights)"]


@requires_official_keys
def test_make_demo_failure_is_one_message_not_a_traceback(weights_dirs, tmp_path):
    """The real command, offline, on a fresh cache: exit code 1 and one line on stderr saying what is missing."""
    env = {**os.environ, "GLIP_D2_WEIGHTS_DIR": str(weights_dirs["no_text"]), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning"}  # as make does
    env.pop("HF_HUB_CACHE", None)
    env.pop("GLIP_D2_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "demo", "make_demo.py"), "--output", str(tmp_path / "demo.png")],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("make demo: error: Could not load the pretrained language model 'bert-base-uncased'")
    assert "loading pretrained bert-base-uncased" in proc.stdout  # the decision's log line
