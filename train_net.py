#!/usr/bin/env python
"""Train or evaluate a glip_d2 model, detectron2 style.

    python train_net.py --config-file configs/quick_schedules/glip_tiny_synthetic.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file CFG --resume                    # continue OUTPUT_DIR's last checkpoint
    python train_net.py --config-file CFG --num-gpus 2 --dist-url auto  # DDP: NCCL on GPUs, gloo on CPU

Every process goes through detectron2's ``launch``; glip_d2's shim makes detectron2 v0.6 use gloo without CUDA.
"""
# isort: off
import glip_d2  # noqa: F401  (first: detectron2 compatibility shims and registrations)
# isort: on
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from glip_d2.engine import GLIPTrainer
from glip_d2.engine.defaults import default_glip_setup, load_glip_cfg


def setup(args):
    cfg = load_glip_cfg(args.config_file, args.opts)
    default_glip_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = GLIPTrainer.build_model_for_eval(cfg, resume=args.resume)
        results = GLIPTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    return default_argument_parser().parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
