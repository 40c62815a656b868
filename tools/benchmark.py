#!/usr/bin/env python
"""Speed and peak memory of a GLIP model against a baseline, with random weights: inference or a training step.

    python tools/benchmark.py                                   # GLIP-T(C) vs GLIP-T(A), CPU, 2 threads, 800x1333
    python tools/benchmark.py --baseline bf16 --device cuda     # fp32 vs bf16 autocast on a GPU
    python tools/benchmark.py --mode train --device cuda        # one training iteration (batch --batch)
    python tools/benchmark.py --mode train --baseline torchvision-dcn \
        --config configs/quick_schedules/Base-GLIP-tiny.yaml --height 224 --width 320   # CPU deformable-conv kernels
    python tools/benchmark.py --onnx --height 480 --width 640   # ONNX Runtime vs PyTorch (needs the [export] extra)
    python tools/benchmark.py --baseline pad-max --names 3 --height 320 --width 512   # computed as the official model
    python tools/benchmark.py --vocabulary lvis --baseline chunk-loop --height 320 --width 481 --runs 1 --warmup 0

Each variant runs in its own subprocess so that CPU peak memory (the process's peak RSS, reset after the model is
built) belongs to that variant alone. Timed: ``model.inference`` on one image with the 80 COCO names as the prompt
(preprocessing, text encoder, backbone, tower, head, post-processing), median of ``--runs`` after ``--warmup``;
``--names N`` keeps the first N names (a short prompt). ``--vocabulary lvis`` prompts the 1203 LVIS names in the
official 40-name chunks instead: one ``inference`` call with every chunk (the backbone runs once), against the
``chunk-loop`` baseline that runs the whole model once per chunk.
With random weights almost no box passes the 0.05 score threshold, so NMS time is negligible here.
``--onnx`` compares deployments instead (one subprocess, time only): the PyTorch ``GLIPPredictor`` (baseline) against
``OnnxGLIP`` on the exported file, with and without the text encoder's outputs cached for the fixed prompt
(``export_onnx(text_features=True)``); the image is fed at ``--height`` x ``--width`` (not resized).
``--mode train`` times one optimisation step instead (forward with losses, backward, AdamW step) on a batch of
``--batch`` images carrying ``--objects`` random ground-truth boxes each, grounded to random prompt phrases.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = {
    "no-fusion": "same input through GLIP-T(A) (no deep fusion, no extra BERT layers)",
    "bf16": "the same model under bfloat16 autocast",
    "torchvision-dcn": "the same model with torchvision's deformable-conv kernels (MODEL.DYHEAD.DEFORM_IMPL)",
    "pad-max": "the same model computed as the official one: every prompt padded to MAX_QUERY_LEN "
               "(MODEL.LANGUAGE.TEST_PAD_TO_LONGEST False), torchvision's deformable-conv kernels",
    "chunk-loop": "the official LVIS protocol: the whole model once per 40-name prompt, each padded to MAX_QUERY_LEN, "
                  "torchvision's deformable-conv kernels (with --vocabulary lvis)",
}
#: Names per prompt of the official chunked LVIS evaluation.
LVIS_CHUNK = 40


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def run_variant(args) -> dict:
    """Child process: build one model, time it, print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, REPO)
    import glip_d2  # noqa: F401  (registers GLIP's models)

    # isort: split
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    glip_d2.add_glip_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, args.variant_config))
    cfg.MODEL.LANGUAGE.PRETRAINED = False  # random weights, no download
    if cfg.MODEL.LANGUAGE.MODEL_NAME == "bert-base-uncased":
        cfg.MODEL.LANGUAGE.TOKENIZER = "embedded-minilm"  # identical vocabulary, bundled
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.DYHEAD.DEFORM_IMPL = args.deform_impl
    cfg.MODEL.LANGUAGE.TEST_PAD_TO_LONGEST = not args.pad_max_test
    torch.manual_seed(0)
    model = build_model(cfg).eval()

    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    from glip_d2.data.prompts import vocabulary_prompt
    from glip_d2.data.tokens import encode_prompt

    coco_names = [c["name"] for c in COCO_CATEGORIES if c["isthing"]][: args.names]
    tokenizer, max_len = model.language_encoder.tokenizer, model.language_encoder.max_query_len
    while True:  # the 80 names, or as many as fit a model with a shorter MAX_QUERY_LEN
        try:
            prompt = encode_prompt(vocabulary_prompt(coco_names), tokenizer, max_len)
            break
        except ValueError:
            if len(coco_names) == 1:
                raise
            coco_names = coco_names[:-1]
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.height, args.width), generator=g, dtype=torch.uint8)
    cuda = args.device.startswith("cuda")
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=args.bf16)

    if args.mode == "train":
        from detectron2.utils.events import EventStorage

        model.train()
        inputs = [training_record(prompt, image, args.objects, g) for _ in range(args.batch)]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        storage = EventStorage(0).__enter__()  # detectron2 models log into the current storage

        def forward():
            with autocast:
                losses = model(inputs)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
            storage.step()
            if cuda:
                torch.cuda.synchronize()
    else:
        size = dict(image=image, height=args.height, width=args.width)
        prompts = _lvis_prompts(tokenizer, max_len) if args.vocabulary == "lvis" else [prompt]
        if args.chunk_loop:  # the official chunked evaluation: the whole model once per prompt
            calls = [[dict(p, **size)] for p in prompts]
        else:  # one call: the backbone runs once, every prompt through text encoder, tower and head
            calls = [[dict(size, prompts=prompts)]]

        def forward():
            with torch.no_grad(), autocast:
                for inputs in calls:
                    model.inference(inputs)
            if cuda:
                torch.cuda.synchronize()

    text_cache = contextlib.ExitStack()  # open for the whole run with --cache-text: the first call encodes the
    if args.cache_text:  # prompts, later calls reuse them
        text_cache.enter_context(model.text_cache.enabled())
    params = sum(p.numel() for p in model.parameters())
    rss_model = _rss_mb("VmRSS")
    warmup_times = []
    for _ in range(args.warmup):
        start = time.perf_counter()
        forward()
        warmup_times.append(time.perf_counter() - start)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    peak_reset = _reset_peak_rss()
    encodes = []  # text-encoder forwards in the timed runs
    counter = model.language_encoder.register_forward_hook(lambda *_: encodes.append(1))
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    counter.remove()
    text_cache.close()
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        total = torch.cuda.max_memory_allocated() / 2**20
    else:
        total = _rss_mb("VmHWM")
        peak = total - rss_model if peak_reset else float("nan")
    names = sum(len(p["positive_map_labels"]) for p in prompts) if args.vocabulary == "lvis" else len(coco_names)
    return {"names": names, "prompts": len(prompts) if args.mode == "inference" else 1,
            "median_s": statistics.median(times), "min_s": min(times), "times": times,
            "first_s": (warmup_times + times)[0], "warmup_times": warmup_times, "text_encodes": len(encodes),
            "params_m": params / 1e6, "peak_extra_mb": peak, "peak_total_mb": total}


def _lvis_prompts(tokenizer, max_len: int) -> list[dict]:
    """The 1203 LVIS names in the official 40-name prompts (``split_vocabulary``, as the chunked evaluation)."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    from glip_d2.data.prompts import split_vocabulary
    from glip_d2.data.tokens import encode_prompt

    names = [c["name"] for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"])]
    chunks = split_vocabulary(names, tokenizer, max_len=max_len, chunk_size=LVIS_CHUNK, only_if_needed=False)
    return [encode_prompt(c, tokenizer, max_len) for c in chunks]


def run_onnx_comparison(args) -> dict:
    """Child process of ``--onnx``: export the model twice (token ids / text features as inputs), then time one
    predictor call per image for PyTorch and both ONNX Runtime files. Self-contained: nothing else uses it."""
    import tempfile

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, REPO)
    import glip_d2  # noqa: F401

    # isort: split
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from detectron2.modeling import build_model

    from glip_d2.engine.defaults import load_glip_cfg
    from glip_d2.engine.predictor import GLIPPredictor
    from glip_d2.export import OnnxGLIP, export_onnx

    cfg = load_glip_cfg(os.path.join(REPO, args.config), freeze=False)
    cfg.MODEL.LANGUAGE.PRETRAINED = False  # random weights, no download
    if cfg.MODEL.LANGUAGE.MODEL_NAME == "bert-base-uncased":
        cfg.MODEL.LANGUAGE.TOKENIZER = "embedded-minilm"
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(args.height, args.width), max(args.height, args.width)
    torch.manual_seed(0)
    predictor = GLIPPredictor(cfg, model=build_model(cfg).eval())
    names = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    while len(predictor.encode_prompt(names)) > 1:  # as many names as one prompt holds
        names = names[:-1]
    image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    padded = [int(-(-d // 32) * 32) for d in (args.height, args.width)]

    def timed(call) -> list[float]:
        for _ in range(args.warmup):
            call()
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return times

    results = {"pytorch": {"times": timed(lambda: predictor(image, names))}}
    with tempfile.TemporaryDirectory() as tmp:
        for role, text_features in (("onnx", False), ("onnx_cached_text", True)):
            path = os.path.join(tmp, f"{role}.onnx")
            summary = export_onnx(cfg, path, model=predictor.model, height=padded[0], width=padded[1],
                                  text_features=text_features)
            start = time.perf_counter()
            runtime = OnnxGLIP(path, threads=args.threads)
            load_s = time.perf_counter() - start
            results[role] = {"times": timed(lambda rt=runtime: rt(image, names)), "mb": summary["bytes"] / 2**20,
                             "export_s": summary["export_seconds"], "load_s": load_s}
            if text_features:  # the text encoder alone: what the cache saves per image
                session, feeds = runtime.model.text_session, _token_feeds(runtime, names)
                results["text_encoder"] = {"times": timed(lambda s=session, f=feeds: s.run(None, f))}
    for r in results.values():
        r["median_s"], r["min_s"] = statistics.median(r["times"]), min(r["times"])
    return {"names": len(names), "padded": padded, "results": results}


def _token_feeds(runtime, names) -> dict:
    """Token ids and attention mask of the benchmark prompt, as OnnxGLIP feeds its text encoder."""
    from glip_d2.tokenization import tokenize_captions

    caption = runtime.encode_prompt(names)[0]["caption"]
    tokens = tokenize_captions(runtime.tokenizer, [caption], runtime.max_len, pad_max=True)
    return {k: v.numpy() for k, v in tokens.items()}


def print_onnx_comparison(args, out: dict) -> None:
    r = out["results"]
    base = r["pytorch"]["median_s"]
    print(f"deployment, one image per call (predictor call: resize, prompt, forward, NMS); CPU, {args.threads} "
          f"threads, input {args.height}x{args.width} (padded {out['padded'][0]}x{out['padded'][1]}), random "
          f"weights, {out['names']}-name COCO prompt; median of {args.runs} after {args.warmup} warm-up")
    header = f"{'variant':<46}{'median s':>10}{'min s':>9}{'time x':>8}{'file MB':>9}{'export s':>10}{'load s':>8}"
    print(header)
    print("-" * len(header))
    rows = [("PyTorch GLIPPredictor (baseline)", "pytorch"), ("OnnxGLIP, one file (text encoder per image)", "onnx"),
            ("OnnxGLIP, text features cached (fixed prompt)", "onnx_cached_text"),
            ("  of which saved: ONNX text encoder alone", "text_encoder")]
    for label, key in rows:
        v = r[key]
        extra = (f"{v['mb']:>9.0f}{v['export_s']:>10.1f}{v['load_s']:>8.1f}" if "mb" in v else "")
        print(f"{label:<46}{v['median_s']:>10.3f}{v['min_s']:>9.3f}{v['median_s'] / base:>8.2f}{extra}")


def training_record(prompt: dict, image, n_objects: int, generator) -> dict:
    """A mapper-style training dict: the image, the prompt, and ``n_objects`` random boxes grounded to random
    phrases of the prompt (``instances.gt_positive_map`` = their token rows)."""
    import torch
    from detectron2.structures import Boxes, Instances

    h, w = image.shape[-2:]
    rows = torch.randint(0, len(prompt["positive_map_labels"]), (n_objects,), generator=generator)
    xy = torch.rand(n_objects, 2, generator=generator) * torch.tensor([w * 0.7, h * 0.7])
    wh = (0.1 + 0.2 * torch.rand(n_objects, 2, generator=generator)) * torch.tensor([w, h])
    instances = Instances((h, w))
    instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    instances.gt_classes = prompt["positive_map_labels"][rows]
    instances.gt_positive_map = prompt["positive_map"][rows].clone()
    return dict(prompt, image=image, instances=instances, height=h, width=w)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/GLIP-T_C.yaml", help="model under test (repo-relative)")
    parser.add_argument("--mode", choices=["inference", "train"], default="inference",
                        help="time model.inference on one image, or one training step on --batch images")
    parser.add_argument("--batch", type=int, default=2, help="images per training step (--mode train)")
    parser.add_argument("--objects", type=int, default=8, help="ground-truth boxes per image (--mode train)")
    parser.add_argument("--baseline", choices=sorted(BASELINES), default="no-fusion")
    parser.add_argument("--baseline-config", default="configs/GLIP-T_A.yaml", help="model for --baseline no-fusion")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--names", type=int, default=80, help="prompt: the first N COCO names (inference)")
    parser.add_argument("--vocabulary", choices=["coco", "lvis"], default="coco",
                        help="lvis: the 1203 LVIS names in the official 40-name prompts (inference)")
    parser.add_argument("--cache-text", action="store_true",
                        help="the model (not the baseline) keeps each prompt's text features across calls, as an "
                             "evaluation does (model.text_cache): the first call encodes, later calls reuse")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--onnx", action="store_true",
                        help="compare PyTorch with ONNX Runtime (exported file, with/without cached text features)")
    parser.add_argument("--variant-config", help=argparse.SUPPRESS)  # child process only
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deform-impl", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--pad-max-test", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant_config:
        result = run_onnx_comparison(args) if args.onnx else run_variant(args)
        print("BENCHMARK_RESULT " + json.dumps(result), flush=True)
        return
    if args.onnx:
        if args.device != "cpu" or args.mode != "inference":
            raise SystemExit("--onnx compares CPU inference (ONNX Runtime's CPU provider)")
        cmd = [sys.executable, os.path.abspath(__file__), "--onnx", "--variant-config", args.config, "--config",
               args.config, "--threads", str(args.threads), "--height", str(args.height), "--width", str(args.width),
               "--runs", str(args.runs), "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = [l for l in proc.stdout.splitlines() if l.startswith("BENCHMARK_RESULT ")]
        if proc.returncode != 0 or not line:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"--onnx benchmark of {args.config} failed (exit {proc.returncode})")
        out = json.loads(line[0].split(" ", 1)[1])
        print_onnx_comparison(args, out)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
        return

    if (args.vocabulary == "lvis") != (args.baseline == "chunk-loop"):
        raise SystemExit("--vocabulary lvis and --baseline chunk-loop go together")
    if args.vocabulary == "lvis" and args.mode != "inference":
        raise SystemExit("--vocabulary lvis times inference")
    variants = [("model", args.config, False, "auto", False)]
    if args.baseline == "no-fusion":
        variants.append(("baseline", args.baseline_config, False, "auto", False))
    elif args.baseline == "bf16":
        variants.append(("baseline", args.config, True, "auto", False))
    elif args.baseline in ("pad-max", "chunk-loop"):
        variants.append(("baseline", args.config, False, "torchvision", True))
    else:
        variants.append(("baseline", args.config, False, "torchvision", False))
    results = {}
    for role, config, bf16, deform_impl, pad_max_test in variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--variant-config", config, "--device", args.device,
               "--threads", str(args.threads), "--height", str(args.height), "--width", str(args.width),
               "--runs", str(args.runs), "--warmup", str(args.warmup), "--mode", args.mode,
               "--batch", str(args.batch), "--objects", str(args.objects), "--deform-impl", deform_impl,
               "--names", str(args.names), "--vocabulary", args.vocabulary]
        cmd += ["--chunk-loop"] if role == "baseline" and args.baseline == "chunk-loop" else []
        cmd += ["--cache-text"] if role == "model" and args.cache_text else []
        cmd += ["--bf16"] if bf16 else []
        cmd += ["--pad-max-test"] if pad_max_test else []
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = [l for l in proc.stdout.splitlines() if l.startswith("BENCHMARK_RESULT ")]
        if proc.returncode != 0 or not line:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"benchmark of {config} failed (exit {proc.returncode})")
        results[role] = dict(json.loads(line[0].split(" ", 1)[1]), config=config, bf16=bf16, deform_impl=deform_impl,
                             pad_max_test=pad_max_test, cache_text=role == "model" and args.cache_text)

    b = results["baseline"]
    what = (f"training step, batch {args.batch}, {args.objects} boxes/image" if args.mode == "train"
            else "inference, one image")
    prompt = (f"{b['names']} LVIS names in {b['prompts']} prompts" if args.vocabulary == "lvis"
              else f"{b['names']}-name COCO prompt")
    print(f"{what}; device {args.device}, {args.threads} threads, input {args.height}x{args.width}, random weights, "
          f"{prompt}; median of {args.runs} after {args.warmup} warm-up")
    print(f"baseline: {BASELINES[args.baseline]}")
    header = (f"{'variant':<46}{'params M':>10}{'first s':>9}{'median s':>10}{'min s':>9}{'peak MB':>10}{'time x':>8}"
              f"{'mem x':>7}")
    print(header)
    print("-" * len(header))
    for role in ("model", "baseline"):
        r = results[role]
        name = os.path.basename(r["config"]) + (" bf16" if r["bf16"] else "")
        name += " tv-dcn" if r["deform_impl"] == "torchvision" else ""
        name += " pad 256" if r["pad_max_test"] else ""
        name += " per prompt" if role == "baseline" and args.baseline == "chunk-loop" else ""
        name += " text cached" if r["cache_text"] else ""
        print(f"{name:<46}{r['params_m']:>10.1f}{r['first_s']:>9.2f}{r['median_s']:>10.2f}{r['min_s']:>9.2f}"
              f"{r['peak_extra_mb']:>10.0f}"
              f"{r['median_s'] / b['median_s']:>8.2f}{r['peak_extra_mb'] / b['peak_extra_mb']:>7.2f}")
    print("first s: the first call (warm-up included); peak MB: extra memory of the timed call over the built model "
          "(and optimizer state when training); CPU: peak RSS, CUDA: max allocated")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
