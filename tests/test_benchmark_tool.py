"""tools/benchmark.py's large-vocabulary mode: the 1203 LVIS names in the official 40-name prompts, all prompts in
one call against the official protocol's loop computed as the official model (a small model, a small image)."""
import json
import os
import subprocess
import sys

from tiny_trained import REPO

BENCHMARK = os.path.join(REPO, "tools", "benchmark.py")


def test_lvis_vocabulary_mode_against_the_chunk_loop(tmp_path):
    out = tmp_path / "lvis.json"
    proc = subprocess.run(
        [sys.executable, BENCHMARK, "--config", "configs/quick_schedules/glip_tiny_synthetic.yaml", "--vocabulary",
         "lvis", "--baseline", "chunk-loop", "--height", "64", "--width", "96", "--runs", "1", "--warmup", "1",
         "--cache-text", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1203 LVIS names in 31 prompts" in proc.stdout
    results = json.loads(out.read_text())
    for role in ("model", "baseline"):
        assert results[role]["names"] == 1203 and results[role]["prompts"] == 31
        assert results[role]["median_s"] > 0
    assert results["baseline"]["deform_impl"] == "torchvision" and results["baseline"]["pad_max_test"]
    assert results["model"]["deform_impl"] == "auto" and not results["model"]["pad_max_test"]
    # --cache-text: the warm-up call encoded the 31 prompts, the timed call reused them; the baseline encodes each
    assert results["model"]["cache_text"] and results["model"]["text_encodes"] == 0
    assert not results["baseline"]["cache_text"] and results["baseline"]["text_encodes"] == 31


def test_lvis_vocabulary_needs_the_chunk_loop_baseline():
    proc = subprocess.run([sys.executable, BENCHMARK, "--vocabulary", "lvis"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert "--vocabulary lvis and --baseline chunk-loop go together" in proc.stderr
