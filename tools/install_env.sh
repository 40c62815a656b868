#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs glip_d2 with everything it needs.
# Idempotent: a stamp records what was installed; a second run with nothing changed returns in about a second.
#
#   DETECTRON2=pb1 (default)  detectron2 v0.6 Python sources from PyPI (pb1-detectron2), built without C++ ops
#   DETECTRON2=git            current upstream detectron2 built from GitHub (needs a compiler; what GPU users want)
#   DETECTRON2=skip           use the detectron2 already importable in the environment
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DETECTRON2=${DETECTRON2:-pb1}
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"

stamp_inputs() { cat tools/install_env.sh setup.py requirements.txt; echo "$DETECTRON2 $TORCH_PINS"; }
want=$(stamp_inputs | sha256sum | cut -c1-16)
if [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$want" ] && "$VENV/bin/python" -c "import glip_d2" 2>/dev/null; then
  echo "[install] $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || { echo "[install] creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
quiet() { grep -v -E "^WARNING: Location|is neither a file nor a directory" || true; }

if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')" 2>/dev/null; then
  echo "[install] torch + torchvision ($TORCH_PINS)"
  "${PIP[@]}" $TORCH_PINS 2>&1 | quiet
fi
echo "[install] dependencies (requirements.txt)"
"${PIP[@]}" -r requirements.txt 2>&1 | quiet

if ! "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('detectron2')" 2>/dev/null; then
  case "$DETECTRON2" in
    pb1)
      # The sdist of pb1-detectron2 has no C++ sources; setup.py would fail compiling them. We build it with no
      # extension modules: glip_d2.compat makes detectron2 importable without its _C ops.
      echo "[install] detectron2 v0.6 (pb1-detectron2, Python only)"
      tmp=$(mktemp -d)
      "$VENV/bin/python" -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
        pb1-detectron2==0.6 -d "$tmp" 2>&1 | quiet
      tar xzf "$tmp"/pb1-detectron2-0.6.tar.gz -C "$tmp"
      sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$tmp"/pb1-detectron2-0.6/setup.py
      grep -q "ext_modules=\[\]," "$tmp"/pb1-detectron2-0.6/setup.py || { echo "unexpected pb1-detectron2 setup.py"; exit 1; }
      "${PIP[@]}" --no-build-isolation "$tmp"/pb1-detectron2-0.6 2>&1 | quiet
      rm -rf "$tmp" ;;
    git)
      echo "[install] upstream detectron2 from GitHub"
      "${PIP[@]}" --no-build-isolation "git+https://github.com/facebookresearch/detectron2.git" 2>&1 | quiet ;;
    skip) echo "[install] DETECTRON2=skip but detectron2 is not importable"; exit 1 ;;
    *) echo "[install] unknown DETECTRON2=$DETECTRON2 (pb1|git|skip)"; exit 1 ;;
  esac
fi

echo "[install] glip_d2 (editable)"
"${PIP[@]}" --no-build-isolation --no-deps -e . 2>&1 | quiet
"$VENV/bin/python" -W ignore -c "import glip_d2, detectron2.modeling; from detectron2.evaluation import COCOEvaluator; print('[install] glip_d2', glip_d2.__version__, 'ready')"
echo "$want" > "$VENV/.installed"
