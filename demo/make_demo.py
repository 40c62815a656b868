#!/usr/bin/env python
"""``make demo``: real detections on a sample picture, offline, and the path of the picture.

Which model (``--model auto``, the default):
* GLIP-T's official weights already in the local cache (``~/.cache/glip_d2/weights`` or the Hugging Face cache;
  nothing is downloaded here): GLIP-T detects "person. tie. medal. flag" zero-shot in the Grace Hopper photo that
  ships with matplotlib;
* otherwise the embedded model shipped in the package (``glip_d2/assets/``, a MobileNetV2 GLIP trained on the
  synthetic "colour shape" scenes by ``tools/train_embedded_model.py``): nothing to train or download. It detects
  the names of the objects in a synthetic validation picture it never saw in training.
``--model tiny`` instead trains the quick schedule's tiny GLIP (``configs/quick_schedules/glip_tiny_synthetic.yaml``,
a few minutes on CPU) and caches it in ``output/glip_tiny_synthetic/`` (retrained only when its config or the model
code changes).

With internet, GLIP-T on your own photo is one command (it downloads GLIP-T once):
    .venv/bin/python demo/demo.py --weights GLIP-T --input my_photo.jpg --prompt "person. dog. bicycle"
Your own picture with whichever model ``make demo`` would use: ``make demo IMAGE=photo.jpg PROMPT="red star."``.
"""
import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "demo"))

TINY_CONFIG = "configs/quick_schedules/glip_tiny_synthetic.yaml"
TINY_DIR = "output/glip_tiny_synthetic"
FINGERPRINT_FILE = "demo_fingerprint.txt"
GLIP_T_PROMPT = ["person", "tie", "medal", "flag"]
# The tiny model puts several loose boxes, with different names, on one object (GLIP's NMS is per phrase); the
# picture keeps the best-scoring phrase per region. Measured on synthetic_val with each picture's own names, score
# >= 0.3: boxes drawn on an object with its name 22 % -> 82 %, objects with such a box 93 % -> 82 % (where a looser
# or wrongly named box outscores the right one, it now hides it).
TINY_AGNOSTIC_NMS = 0.3
# The embedded model's picture settings (score threshold, one phrase per region at this IoU).
EMBEDDED_THRESHOLD = 0.3
EMBEDDED_AGNOSTIC_NMS = 0.3


def _config_chain(path: str):
    """The config file and every _BASE_ it inherits from."""
    import yaml

    chain = []
    while path:
        chain.append(path)
        with open(path) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        path = os.path.normpath(os.path.join(os.path.dirname(path), base)) if base else None
    return chain


def tiny_fingerprint(config_file: str = TINY_CONFIG) -> str:
    """Hash of what decides the trained tiny model: its configs and the model/data/engine code."""
    h = hashlib.sha256()
    files = _config_chain(config_file) + ["glip_d2/config.py"]
    for pattern in ("glip_d2/modeling/**/*.py", "glip_d2/data/**/*.py", "glip_d2/engine/*.py"):
        files += sorted(glob.glob(pattern, recursive=True))
    for path in files:
        h.update(path.encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _cached_fingerprint(output_dir: str) -> str | None:
    stamp = os.path.join(output_dir, FINGERPRINT_FILE)
    if not os.path.isfile(stamp):
        return None
    with open(stamp) as f:
        return f.read().strip()


def cached_tiny_model(output_dir: str = TINY_DIR, config_file: str = TINY_CONFIG) -> str | None:
    """The trained tiny model's checkpoint if it is cached and current (same configs and code), else None."""
    final = os.path.join(output_dir, "model_final.pth")
    current = os.path.isfile(final) and _cached_fingerprint(output_dir) == tiny_fingerprint(config_file)
    return final if current else None


def ensure_tiny_model(
    output_dir: str = TINY_DIR, config_file: str = TINY_CONFIG, retrain: bool = False, opts=()
) -> str:
    """Path of the trained tiny model's final checkpoint; trains it with train_net.py when missing or stale."""
    final = os.path.join(output_dir, "model_final.pth")
    stamp = os.path.join(output_dir, FINGERPRINT_FILE)
    wanted = tiny_fingerprint(config_file)
    current = _cached_fingerprint(output_dir)
    if current == wanted and os.path.isfile(final) and not retrain:
        print(f"[demo] using the cached tiny model {final}")
        return final
    resume = current == wanted and os.path.isfile(os.path.join(output_dir, "last_checkpoint")) and not retrain
    if not resume and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with open(stamp, "w") as f:
        f.write(wanted + "\n")
    cmd = [sys.executable, "train_net.py", "--config-file", config_file] + (["--resume"] if resume else [])
    cmd += ["OUTPUT_DIR", output_dir, *opts]
    print(f"[demo] no trained model cached: training the tiny GLIP on the synthetic set ({'resuming' if resume else 'first use'}, "
          "a few minutes on CPU)\n[demo] $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    if not os.path.isfile(final):
        raise RuntimeError(f"training finished without writing {final}")
    return final


def synthetic_sample(dataset_root: str = "", min_objects: int = 3):
    """The first synthetic validation record with at least ``min_objects`` objects (generates the set if needed)."""
    from detectron2.data import DatasetCatalog

    from glip_d2.data.datasets import register_synthetic_from_cfg
    from glip_d2.engine.defaults import load_glip_cfg

    register_synthetic_from_cfg(load_glip_cfg(TINY_CONFIG, ["DATASETS.SYNTHETIC.ROOT", dataset_root] if dataset_root else []))
    records = DatasetCatalog.get("synthetic_val")
    for r in records:
        if len(r["annotations"]) >= min_objects:
            return r
    return records[0]


def tiny_prompt(record) -> str:
    """The prompt a user would type for a synthetic picture: the names of what is in it (its list-style caption)."""
    from glip_d2.data.datasets import SYNTHETIC_CATEGORY_NAMES

    return ". ".join(sorted({SYNTHETIC_CATEGORY_NAMES[a["category_id"]] for a in record["annotations"]}))


def cached_glip_t():
    """Local path of GLIP-T's official weights if they are already cached, else None (never downloads)."""
    try:
        from glip_d2 import model_zoo
        from glip_d2.checkpoint.hub import fetch_zoo_weights

        return fetch_zoo_weights(model_zoo.get_entry("GLIP-T"), local_files_only=True)
    except (OSError, KeyError, RuntimeError):  # not cached (WeightsNotAvailableError is a RuntimeError), no entry
        return None


def embedded_model():
    """(config file, weights file) of the model shipped in the package, or None when the file is missing."""
    from glip_d2.embedded_model import CONFIG_FILE, WEIGHTS_FILE

    return (CONFIG_FILE, WEIGHTS_FILE) if os.path.isfile(WEIGHTS_FILE) else None


class DemoModel(NamedTuple):
    kind: str  # "glip-t", "embedded" or "tiny"
    label: str
    config_file: str
    weights: str
    threshold: float
    agnostic_nms: float | None  # one phrase per region at this IoU, or off


def choose_model(args) -> DemoModel:
    """The model the demo runs: GLIP-T when cached, else the embedded model, else the quick schedule trained here."""
    glip_t = cached_glip_t() if args.model in ("auto", "glip-t") else None
    if args.model == "glip-t" and glip_t is None:
        raise SystemExit(
            "GLIP-T weights are not in the local cache; with internet run:\n  .venv/bin/python demo/demo.py "
            '--weights GLIP-T --input my_photo.jpg --prompt "person. dog. bicycle"'
        )
    if glip_t is not None:
        from glip_d2 import model_zoo

        # the cached file itself (not the zoo name): nothing asks the hub again. It holds the text encoder too, so
        # bert-base-uncased is built from its architecture, not downloaded (one log line says so).
        return DemoModel("glip-t", f"GLIP-T (cached: {glip_t})", model_zoo.get_config_file("GLIP-T"), glip_t, 0.5, None)
    embedded = embedded_model() if args.model in ("auto", "embedded") else None
    if args.model == "embedded" and embedded is None:
        raise SystemExit("the embedded model's file is missing: python tools/train_embedded_model.py writes it")
    if embedded is not None:
        return DemoModel("embedded", "the embedded model (synthetic colour-shape names)", *embedded,
                         EMBEDDED_THRESHOLD, EMBEDDED_AGNOSTIC_NMS)
    root_opts = ["DATASETS.SYNTHETIC.ROOT", args.dataset_root] if args.dataset_root else []
    weights = ensure_tiny_model(args.cache_dir, retrain=args.retrain, opts=root_opts)
    return DemoModel("tiny", "the quick-schedule tiny model", TINY_CONFIG, weights, 0.3, TINY_AGNOSTIC_NMS)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["auto", "embedded", "tiny", "glip-t"], default="auto")
    parser.add_argument("--image", default="", help="your own picture (needs --prompt) instead of the sample")
    parser.add_argument("--prompt", default="", help="with --image: names ('red star. blue circle.') or a sentence")
    parser.add_argument("--output", default="output/demo/demo.png", help="picture to write (.png/.jpg)")
    parser.add_argument("--retrain", action="store_true", help="--model tiny: train it again even if cached")
    parser.add_argument("--cache-dir", default=TINY_DIR, help="where the trained tiny model is cached")
    parser.add_argument("--dataset-root", default="", help="synthetic data folder (default: the config's)")
    parser.add_argument("--confidence-threshold", type=float, default=None,
                        help=f"default 0.5 (GLIP-T) / {EMBEDDED_THRESHOLD} (embedded) / 0.3 (tiny)")
    parser.add_argument(
        "--agnostic-nms", type=float, default=None, metavar="IOU",
        help="one phrase per region (demo.py --agnostic-nms); default off (GLIP-T) / "
             f"{EMBEDDED_AGNOSTIC_NMS} (embedded) / {TINY_AGNOSTIC_NMS} (tiny), 1 = off",
    )
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides for the model (demo.py --opts): KEY VALUE pairs")
    args = parser.parse_args(argv)
    if bool(args.image) != bool(args.prompt):
        raise SystemExit("give --image and --prompt together (make demo IMAGE=photo.jpg PROMPT=\"person. dog.\"), "
                         "or neither for the sample picture")
    if args.image:
        args.image = os.path.abspath(args.image)
    os.chdir(REPO)

    import demo as demo_cli  # demo/demo.py

    model = choose_model(args)
    threshold, agnostic_nms = model.threshold, model.agnostic_nms
    truth = None
    if args.image:
        image, prompt = args.image, args.prompt
    elif model.kind == "glip-t":
        import matplotlib.cbook

        image, prompt = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), ". ".join(GLIP_T_PROMPT)
    else:
        from glip_d2.data.datasets import SYNTHETIC_CATEGORY_NAMES

        record = synthetic_sample(args.dataset_root)
        image, prompt = record["file_name"], tiny_prompt(record)
        truth = sorted(SYNTHETIC_CATEGORY_NAMES[a["category_id"]] for a in record["annotations"])
    print(f"[demo] {model.label}: grounding {prompt!r} in {image}", flush=True)
    if args.confidence_threshold is not None:
        threshold = args.confidence_threshold
    if args.agnostic_nms is not None:
        agnostic_nms = args.agnostic_nms
    demo_args = ["--config-file", model.config_file, "--weights", model.weights, "--prompt", prompt]
    if agnostic_nms is not None:
        demo_args += ["--agnostic-nms", str(agnostic_nms)]
    written = demo_cli.main(
        demo_args + ["--input", image, "--output", args.output, "--confidence-threshold", str(threshold)]
        + (["--opts", *args.opts] if args.opts else [])
    )[0]
    if truth is not None:
        print(f"[demo] objects in the picture (ground truth): {', '.join(truth)}")
    print(f"[demo] picture with the detections: {os.path.abspath(written)}")
    return written


def _error_message(e: BaseException) -> str:
    """What went wrong and how to fix it, from an exception raised under main()."""
    if isinstance(e, subprocess.CalledProcessError):
        cmd = " ".join(map(str, e.cmd)) if isinstance(e.cmd, (list, tuple)) else str(e.cmd)
        return (f"training the tiny model failed (exit code {e.returncode}; its output is above). "
                f"Run it yourself to see the whole log: {cmd}")
    from glip_d2.checkpoint import CheckpointError

    message = str(e).strip() or type(e).__name__
    if isinstance(e, (OSError, ImportError, ValueError, CheckpointError)):  # errors written for users
        return message
    return f"{type(e).__name__}: {message} (set GLIP_D2_TRACEBACK=1 to see the traceback)"


def cli(argv=None) -> int:
    """``make demo``: main(), with a failure reported as one message (what is missing and what fixes it), exit 1."""
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no "Retrying in 8s" lines when offline: the failure, if any, says it all
    try:
        main(argv)
    except Exception as e:  # noqa: BLE001 - every failure becomes one message, not a traceback
        if os.environ.get("GLIP_D2_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"make demo: error: {_error_message(e)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
