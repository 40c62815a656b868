#!/usr/bin/env python
"""Reproduce the embedded model shipped in glip_d2/assets/: train it with its config and seed, write the compact file,
and evaluate the file (box AP and per-object name accuracy on synthetic_val and synthetic_test).

    python tools/train_embedded_model.py                  # train (about 45 minutes on 2 CPU cores), write, evaluate
    python tools/train_embedded_model.py --checkpoint output/glip_mobilenet_synthetic/model_final.pth   # write, evaluate
"""
import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from glip_d2.embedded_model import CONFIG_FILE, WEIGHTS_FILE, write_compact_checkpoint  # noqa: E402


def train_net(*args: str) -> None:
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG_FILE, *args]
    print("[embedded] $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="", help="a finished training run's model_final.pth (skip training)")
    parser.add_argument("--output", default=WEIGHTS_FILE, help="the compact file to write")
    parser.add_argument("--output-dir", default="output/glip_mobilenet_synthetic", help="training run folder")
    parser.add_argument("--no-eval", action="store_true", help="do not evaluate the written file")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    if not checkpoint:
        train_net("OUTPUT_DIR", args.output_dir, "DATASETS.TEST", "()")
        checkpoint = os.path.join(args.output_dir, "model_final.pth")
    written = write_compact_checkpoint(checkpoint, args.output)
    print(f"[embedded] {args.output}: {written['tensors']} tensors, {written['bytes'] / 2**20:.2f} MiB "
          f"(float16, text encoder left out), from {checkpoint} (sha256 {written['source_sha256'][:12]})", flush=True)
    if not args.no_eval:  # what a user gets: the file as shipped, on held-out scenes
        train_net("--eval-only", "MODEL.WEIGHTS", args.output, "OUTPUT_DIR", os.path.join(args.output_dir, "shipped"),
                  "DATASETS.TEST", "('synthetic_val', 'synthetic_test')")
    return args.output


if __name__ == "__main__":
    main()
