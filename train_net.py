#!/usr/bin/env python
"""Train or evaluate a glip_d2 model, detectron2 style.

    python train_net.py --config-file configs/quick_schedules/glip_tiny_synthetic.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file CFG --resume                    # continue OUTPUT_DIR's last checkpoint
    python train_net.py --config-file CFG --num-gpus 2 --dist-url auto  # DDP: NCCL on GPUs, gloo on CPU

Every process goes through detectron2's ``launch`` (gloo without CUDA: upstream detectron2, or the v0.6 that
tools/install_env.sh installs).
"""
from detectron2.engine import default_argument_parser, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from glip_d2 import compat
from glip_d2.engine import GLIPTrainer, test_with_tta
from glip_d2.engine.defaults import default_glip_setup, end_process_group, load_glip_cfg


def setup(args):
    cfg = load_glip_cfg(args.config_file, args.opts)
    default_glip_setup(cfg, args)
    return cfg


def main(args):
    results = run(args)
    end_process_group()
    return results


def run(args):
    cfg = setup(args)
    if args.eval_only:
        model = GLIPTrainer.build_model_for_eval(cfg, resume=args.resume)
        results = GLIPTrainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:  # multi-scale + flip test as well (GLIP-L's fine-tuned COCO number)
            results.update(test_with_tta(GLIPTrainer, cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:  # after the last iteration, as detectron2's train_net
        trainer.register_hooks([hooks.EvalHook(0, lambda: test_with_tta(GLIPTrainer, cfg, trainer.eval_model()))])
    return trainer.train()


def parse_args(argv=None):
    return default_argument_parser().parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    compat.check_launch(args.num_gpus)  # a clear error before spawning, when this detectron2 cannot run on CPU
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
