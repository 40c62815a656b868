#!/usr/bin/env python
"""The README's CPU speed table in one run (``make benchmark``, about 7 minutes on 2 cores).

Three ``tools/benchmark.py`` comparisons of GLIP-T(C) with random weights, 2 threads, on inputs of the size the
official figures below were taken at (a 300x451 photo at test sizes 320/512 and 800/1333: 320x481 and 800x1203):

* a 3-name prompt at 320x481 and at 800x1203: the default path against the same model computed as the official
  one (``--baseline pad-max``: prompts padded to 256 tokens, the fusion as written, torchvision's deformable
  convs), median of 3 after a warm-up, peak RSS of each in its own process;
* the 1203 LVIS names in the official 40-name prompts at 320x481: one ``inference`` call, text features kept across
  images as an evaluation keeps them (the first, cold call is reported too), against the official protocol's loop
  over the prompts computed as the official model (``--baseline chunk-loop``), one run after a warm-up.

Each time is divided into the baseline's (same run) and into the official GLIP-T(C)'s own time on this machine
class (``OFFICIAL``: measured outside this repository with the official code, its CUDA-only ops replaced by exact CPU
equivalents, the same deterministic weights, 1 warm-up + median of 3; the LVIS figure is 31 prompts x its 320/512
time, the official protocol's loop).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK = os.path.join(REPO, "tools", "benchmark.py")

#: The official GLIP-T(C) on a 2-core CPU of this machine class: seconds per image and peak RSS (GB, 800/1333 only).
OFFICIAL = {"320x481": {"s": 5.40}, "800x1203": {"s": 39.5, "rss_gb": 3.52}, "lvis": {"s": 31 * 5.40}}

CASES = [
    ("320x481, 3 names", "320x481", ["--baseline", "pad-max", "--names", "3", "--height", "320", "--width", "481"]),
    ("800x1203, 3 names", "800x1203", ["--baseline", "pad-max", "--names", "3", "--height", "800", "--width", "1203"]),
    ("LVIS 1203 names, 31 prompts, 320x481", "lvis",
     ["--vocabulary", "lvis", "--baseline", "chunk-loop", "--cache-text", "--height", "320", "--width", "481",
      "--runs", "1", "--warmup", "1"]),
]


def run_case(extra: list[str], threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [sys.executable, BENCHMARK, "--threads", str(threads), "--json", path, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
            raise SystemExit(f"benchmark failed: {' '.join(extra)}")
        with open(path) as f:
            return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write every case's benchmark results here")
    args = parser.parse_args()

    rows, raw = [], {}
    for i, (name, official_key, extra) in enumerate(CASES, 1):
        print(f"[{i}/{len(CASES)}] {name} ...", flush=True)
        r = raw[name] = run_case(extra, args.threads)
        model, base, official = r["model"], r["baseline"], OFFICIAL[official_key]
        rss = f"{model['peak_total_mb'] / 1024:.2f} / {base['peak_total_mb'] / 1024:.2f}"
        if "rss_gb" in official:
            rss += f" / {official['rss_gb']:.2f} ({model['peak_total_mb'] / 1024 / official['rss_gb']:.2f}x)"
        rows.append((name, f"{model['first_s']:.2f}", f"{model['median_s']:.2f}", f"{base['median_s']:.2f}",
                     f"{base['median_s'] / model['median_s']:.1f}x", f"{official['s']:.1f}",
                     f"{official['s'] / model['median_s']:.1f}x", rss))

    print(f"\nGLIP-T(C) inference on CPU, {args.threads} threads, random weights. baseline: the same model computed as "
          "the official one, in the same run; official: the official GLIP-T(C) on this machine class.")
    header = ("case", "first s", "default s", "baseline s", "vs baseline", "official s", "vs official",
              "peak RSS GB default / baseline / official")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=2)


if __name__ == "__main__":
    main()
