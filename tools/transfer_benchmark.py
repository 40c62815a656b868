"""Transfer benchmark: zero-shot / K-shot / prompt tuning / linear probe / full fine-tuning over many datasets.

Prints one table (AP per dataset, average, trainable parameters, checkpoint size, wall time) and writes
``OUTPUT/cells.jsonl``, ``OUTPUT/table.md`` and, with ``--plot``, ``OUTPUT/transfer.png``.

Synthetic domains (offline, minutes on a CPU; base = the quick-schedule model)::

    python tools/transfer_benchmark.py --config-file configs/quick_schedules/glip_tiny_synthetic.yaml \\
        --weights output/glip_tiny_synthetic/model_final.pth --domains renamed,outlines,new_shapes \\
        --modes zero_shot,prompt,linear_probe,full --iterations 150 --output output/transfer --plot

ODinW-13 (GLIP's protocol; data under $DETECTRON2_DATASETS/odinw)::

    python tools/transfer_benchmark.py --config-file configs/GLIP-T.yaml --weights glip_d2://glip_tiny_model_o365_goldg \\
        --odinw odinw_13 --modes zero_shot,prompt --shots 1,3,5,10 --official-schedule --output output/odinw13

Trailing ``KEY VALUE`` pairs override the base config for every cell (e.g. ``MODEL.DEVICE cuda``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from glip_d2 import add_glip_config  # noqa: E402
from glip_d2.engine.transfer_benchmark import (  # noqa: E402
    MODES,
    DatasetSpec,
    format_table,
    plot_cells,
    run_transfer_benchmark,
)


def _synthetic_specs(domains: list[str], root: str, seed: int, split: str) -> list[DatasetSpec]:
    from glip_d2.data.datasets.synthetic_domains import DOMAINS, register_synthetic_domain

    specs = []
    for d in domains:
        if d not in DOMAINS:
            raise SystemExit(f"--domains: unknown synthetic domain {d!r}; known: {', '.join(sorted(DOMAINS))}")
        register_synthetic_domain(d, root, seed=seed)
        specs.append(DatasetSpec(d, f"synthetic_{d}_train", f"synthetic_{d}_{split}"))
    return specs


def _odinw_specs(which: str, split: str) -> list[DatasetSpec]:
    """ODinW datasets with GLIP's per-dataset settings (the ODinW-13 names and prompts of GLIP's paper for
    "odinw_13"); the benchmark picks train / evaluation splits itself."""
    from glip_d2.data.datasets import odinw

    configs = "odinw_13" if which.lower() == "odinw_13" else "odinw_35"
    prefix = "odinw13" if configs == "odinw_13" else "odinw"
    names = list(getattr(odinw, which.upper())) if which.lower() in ("odinw_13", "odinw_35") else which.split(",")
    odinw.register_odinw_benchmark(names, splits=("train", split), configs=configs)
    specs = []
    for n in names:
        flat = odinw.odinw_config_overrides(n, configs=configs)
        pairs = [(k, v) for k, v in zip(flat[::2], flat[1::2]) if k not in ("DATASETS.TRAIN", "DATASETS.TEST")]
        specs.append(DatasetSpec(n, f"{prefix}_{n}_train", f"{prefix}_{n}_{split}", [x for kv in pairs for x in kv]))
    return specs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="the base model's config")
    parser.add_argument("--weights", default="", help="the base weights (path or glip_d2:// name)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--domains", help="synthetic domains, comma-separated (renamed, outlines, new_shapes)")
    source.add_argument("--odinw", help="odinw_13, odinw_35, or ODinW dataset names, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--shots", default="0", help="K-shot settings, comma-separated (0 = all training data)")
    parser.add_argument("--seed", type=int, default=0, help="DATASETS.SHUFFLE_SEED of the K-shot sampler")
    parser.add_argument("--eval-split", default="test", choices=("val", "test"),
                        help="split evaluated (tune recipes on val, report test)")
    parser.add_argument("--iterations", type=int, default=200, help="training iterations per cell")
    parser.add_argument("--official-schedule", action="store_true",
                        help="K-shot cells use the paper's epochs and copies (1_200_8, 3_200_4, 5_200_2, 10_200_1)")
    parser.add_argument("--domain-root", default="datasets/synthetic_domains", help="where synthetic domains go")
    parser.add_argument("--output", required=True, help="folder for every run, cells.jsonl, table.md, transfer.png")
    parser.add_argument("--plot", action="store_true", help="also draw OUTPUT/transfer.png")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every cell")
    args = parser.parse_args(argv)

    setup_logger(name="glip_d2")
    setup_logger()
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.WEIGHTS = args.weights
    if args.domains:
        specs = _synthetic_specs(args.domains.split(","), args.domain_root, args.seed, args.eval_split)
    else:
        specs = _odinw_specs(args.odinw, args.eval_split)
    shots = [int(k) for k in args.shots.split(",")]
    cells = run_transfer_benchmark(
        cfg, specs, [m.strip() for m in args.modes.split(",")], shots, output_dir=args.output,
        iterations=args.iterations, seed=args.seed, official_schedule=args.official_schedule,
        on_cell=lambda c: print(f"[transfer] {c.dataset} {c.mode} {c.shots}-shot: AP {c.ap:.1f} AP50 {c.ap50:.1f} "
                                f"({c.seconds:.0f} s)", flush=True),
    )
    table = format_table(cells)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    if args.plot:
        print("plot:", plot_cells(cells, os.path.join(args.output, "transfer.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
