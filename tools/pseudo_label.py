#!/usr/bin/env python
"""Pseudo-label image–text pairs with a teacher GLIP: the noun phrases of each caption, grounded, as shards.

    python tools/pseudo_label.py --config-file TEACHER.yaml --weights model_final.pth \\
        --input pairs.jsonl --image-root images/ --output datasets/pseudo/mine
    python tools/pseudo_label.py ... --num-gpus 8                       # one teacher per GPU (gloo on CPU)
    python tools/pseudo_label.py ... --num-machines 4 --machine-rank R --dist-url tcp://HOST:PORT

Input: a ``.jsonl`` / ``.csv`` / ``.tsv`` file of ``image, caption`` rows, or a COCO-captions ``.json``. Output:
``OUTPUT/shard_000000.json``, ... (MDETR-style grounding jsons); rerun the same command after an interruption and
only the missing shards are done. A student trains on them through ``DATASETS.REGISTER_PSEUDO`` (see
configs/self_training/).
"""
import argparse
import sys

from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from glip_d2 import compat
from glip_d2.engine.defaults import end_process_group, load_cli_cfg
from glip_d2.engine.predictor import GLIPPredictor
from glip_d2.self_training import PseudoLabelSettings, count_pairs, pseudo_label


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="", help="the teacher's config")
    parser.add_argument("--weights", default="", help="the teacher's weights: a file or a model-zoo name")
    parser.add_argument("--input", required=True, help=".jsonl / .csv / .tsv of image,caption rows, or COCO captions")
    parser.add_argument("--image-root", default=None, help="folder that relative image paths are under")
    parser.add_argument("--output", required=True, help="folder of the shards")
    defaults = PseudoLabelSettings()
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="pairs per shard file")
    parser.add_argument("--score-threshold", type=float, default=defaults.score_threshold,
                        help="keep a box when the teacher's score for its phrase is at least this")
    parser.add_argument("--topk-per-phrase", type=int, default=defaults.topk_per_phrase,
                        help="at most this many boxes per phrase occurrence, best first")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per forward pass")
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default=defaults.on_bad_row,
                        help="a malformed row or unreadable image: stop with an error naming it, or skip and count")
    parser.add_argument("--no-eta", action="store_true", help="do not count the pairs first (no ETA in the log)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes on this machine (one per GPU; CPU: gloo)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 (auto: one machine)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the teacher's config")
    return parser.parse_args(argv)


def _count_on_main_process(args) -> int:
    """The number of pairs, for the ETA: one text-only pass on the main process, shared with every process (with
    its error, if the file has a bad row, so that every process stops with the same message)."""
    counted = None
    if comm.is_main_process():
        try:
            counted = count_pairs(args.input, args.image_root, args.on_bad_row)
        except (OSError, ValueError) as e:
            counted = e
    counted = comm.all_gather(counted)[0]
    if isinstance(counted, Exception):
        raise counted
    return counted


def main(args) -> dict:
    setup_logger(name="glip_d2", distributed_rank=comm.get_rank())
    cfg = load_cli_cfg(args.config_file, args.weights, args.opts)
    settings = PseudoLabelSettings(
        score_threshold=args.score_threshold, topk_per_phrase=args.topk_per_phrase, shard_size=args.shard_size,
        batch_size=args.batch_size, on_bad_row=args.on_bad_row,
    )
    total = None if args.no_eta else _count_on_main_process(args)
    predictor = GLIPPredictor(cfg)
    counts = pseudo_label(cfg, predictor, args.input, args.output, settings, args.image_root, total)
    every = comm.gather(counts, dst=0)
    main_process = comm.is_main_process()
    end_process_group()
    if not main_process:
        return counts
    summed = {k: sum(c[k] for c in every) for k in counts if k != "seconds"}
    seconds = max(c["seconds"] for c in every)
    rate = summed["pairs"] / seconds if seconds > 0 else 0.0
    print(f"pseudo-labelled {summed['pairs']} pairs into {summed['shards_written']} new shards in {seconds:.1f} s "
          f"({rate:.2f} images/s over {len(every)} processes): {summed['boxes']} boxes, {summed['no_phrase']} "
          f"captions without a usable phrase, {summed['bad_image'] + summed['skipped_rows']} bad pairs skipped; "
          f"shards in {args.output}", flush=True)
    return summed


if __name__ == "__main__":
    args = parse_args()
    compat.check_launch(args.num_gpus)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    sys.exit(0)
