#!/usr/bin/env python
"""Generate the synthetic grounding dataset (and optionally draw a few annotated samples to check it).

    python tools/make_synthetic_data.py --root datasets/synthetic --num-train 200 --num-val 50 --seed 0
    python tools/make_synthetic_data.py --vis-dir /tmp/synthetic_vis --vis-count 8

Training does not need this step (``register_synthetic`` generates on first use); it is for inspecting the data
or preparing it ahead of a distributed run.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import glip_d2  # noqa: F401  (registers the datasets)
from glip_d2.data.datasets.synthetic import (
    SYNTHETIC_DATASETS,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
)


def _visualize(names, out_dir, count):
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        for record in DatasetCatalog.get(name)[:count]:
            image = cv2.imread(record["file_name"])[:, :, ::-1]
            vis = Visualizer(image, MetadataCatalog.get(name), scale=2.0).draw_dataset_dict(record)
            path = os.path.join(out_dir, f"{name}_{record['image_id']:06d}.jpg")
            cv2.imwrite(path, vis.get_image()[:, :, ::-1])
            print(f"{path}: {record['caption']!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="datasets/synthetic")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--num-test", type=int, default=50, help="held-out split, never used for tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even when the manifest matches")
    parser.add_argument("--vis-dir", default="", help="draw annotated samples of every variant here")
    parser.add_argument("--vis-count", type=int, default=4)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.force:
        generate_synthetic_dataset(args.root, args.num_train, args.num_val, args.seed, args.num_test)
        generated = True
    else:
        generated = ensure_synthetic_dataset(args.root, args.num_train, args.num_val, args.seed, args.num_test)
    state = f"generated in {time.perf_counter() - start:.1f} s" if generated else "already up to date"
    print(f"{args.root}: {args.num_train} train / {args.num_val} val / {args.num_test} test images, seed {args.seed} ({state})")
    if args.vis_dir:
        from glip_d2.data.datasets.synthetic import register_synthetic

        register_synthetic(args.root, args.num_train, args.num_val, args.seed, num_test=args.num_test)
        _visualize(list(SYNTHETIC_DATASETS), args.vis_dir, args.vis_count)


if __name__ == "__main__":
    main()
