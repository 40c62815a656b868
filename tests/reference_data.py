"""Where the tests find the official GLIP reference data, and how they read it (the one place that knows).

The data is not part of the repository. By default it lives in a folder ``shared/`` beside the repository root
(``<repo>/../shared``); a clone elsewhere points at a copy with environment variables:

* ``GLIP_D2_SHARED_DIR``: the folder that holds ``design/reference`` and ``design/official_keys``;
* ``GLIP_D2_REFERENCE_DIR``: the reference run itself (``astronaut.pt``, ``make_weights.py``,
  ``weights_manifest.json``), by default ``$GLIP_D2_SHARED_DIR/design/reference``;
* ``GLIP_D2_OFFICIAL_KEYS_DIR``: the official state-dict key lists (``glip_{T_A,T_C,L}.tsv``), by default
  ``$GLIP_D2_SHARED_DIR/design/official_keys``.

Tests that need the data carry ``@requires_reference`` / ``@requires_official_keys``: without it they are skipped,
and the reason names the folder looked at and the variable to set. The loaders below raise ``FileNotFoundError``
with the same explanation when called without the data.
"""
import functools
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _folder(env: str, default: Path) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser() if value else default


SHARED_DIR = _folder("GLIP_D2_SHARED_DIR", REPO_ROOT.parent / "shared")
REFERENCE_DIR = _folder("GLIP_D2_REFERENCE_DIR", SHARED_DIR / "design" / "reference")
OFFICIAL_KEYS_DIR = _folder("GLIP_D2_OFFICIAL_KEYS_DIR", SHARED_DIR / "design" / "official_keys")

#: The official GLIP-T(C) outputs for one photo and prompt (layout: the reference folder's README.md).
REFERENCE_FILE = REFERENCE_DIR / "astronaut.pt"
#: ``make_weight(key, shape, rule)``: the deterministic, key-seeded weights the reference run used.
MAKE_WEIGHTS_FILE = REFERENCE_DIR / "make_weights.py"
#: One entry per official state-dict key: shape, rule, whether it was generated, checksums.
MANIFEST_FILE = REFERENCE_DIR / "weights_manifest.json"
#: Variants whose key lists the tests read (``glip_<variant>.tsv``).
OFFICIAL_KEY_VARIANTS = ("T_A", "T_C", "L")


def _env_hint(specific: str, subfolder: str) -> str:
    return f"set {specific} to the folder that holds them, or GLIP_D2_SHARED_DIR to the folder that holds {subfolder}"


REFERENCE_MISSING = (
    f"official reference data (astronaut.pt, make_weights.py, weights_manifest.json) not found in {REFERENCE_DIR}; "
    + _env_hint("GLIP_D2_REFERENCE_DIR", "design/reference")
)
OFFICIAL_KEYS_MISSING = (
    f"official key lists ({', '.join(f'glip_{v}.tsv' for v in OFFICIAL_KEY_VARIANTS)}) not found in "
    f"{OFFICIAL_KEYS_DIR}; " + _env_hint("GLIP_D2_OFFICIAL_KEYS_DIR", "design/official_keys")
)


def reference_available() -> bool:
    return all(p.is_file() for p in (REFERENCE_FILE, MAKE_WEIGHTS_FILE, MANIFEST_FILE))


def official_keys_available() -> bool:
    return all((OFFICIAL_KEYS_DIR / f"glip_{v}.tsv").is_file() for v in OFFICIAL_KEY_VARIANTS)


requires_reference = pytest.mark.skipif(not reference_available(), reason=REFERENCE_MISSING)
requires_official_keys = pytest.mark.skipif(not official_keys_available(), reason=OFFICIAL_KEYS_MISSING)


def _need_reference() -> None:
    if not reference_available():
        raise FileNotFoundError(REFERENCE_MISSING)


@functools.cache
def load_reference() -> dict:
    """The contents of ``astronaut.pt`` (loaded once per session, on the CPU; treat it as read-only)."""
    _need_reference()
    return torch.load(REFERENCE_FILE, map_location="cpu", weights_only=False)


@functools.cache
def reference_manifest() -> dict:
    """``weights_manifest.json``: ``entries`` (key, shape, rule, generated, sum, first, ...) and summaries."""
    _need_reference()
    return json.loads(MANIFEST_FILE.read_text())


@functools.cache
def _make_weights_module():
    """The reference's ``make_weights.py``, loaded from its file (nothing is added to ``sys.path``)."""
    _need_reference()
    spec = importlib.util.spec_from_file_location("glip_d2_tests_reference_make_weights", MAKE_WEIGHTS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_reference_weights(prefix: str = "") -> dict[str, torch.Tensor]:
    """The reference run's weights under official key names (no ``module.``), for keys starting with ``prefix``.

    Only the manifest entries marked ``generated``: the buffers kept as constructed (``relative_position_index``,
    ``cell_anchors``) are left out, glip_d2 recomputes them. Tensors are regenerated on each call (not cached).
    """
    make_weight = _make_weights_module().make_weight
    return {
        e["key"]: make_weight(e["key"], e["shape"], e["rule"])
        for e in reference_manifest()["entries"]
        if e["key"].startswith(prefix) and e.get("generated", True)
    }


@functools.cache
def _parse_key_list(variant: str) -> tuple[tuple[str, tuple[int, ...], torch.dtype], ...]:
    path = OFFICIAL_KEYS_DIR / f"glip_{variant}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"official key list {path.name} not found in {OFFICIAL_KEYS_DIR}; "
            + _env_hint("GLIP_D2_OFFICIAL_KEYS_DIR", "design/official_keys")
        )
    rows = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        rows.append((key, shape, getattr(torch, dtype.replace("torch.", ""))))
    return tuple(rows)


def official_key_list(variant: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """``[(key, shape, dtype)]`` of the official model ``variant`` (``T_A``, ``T_C``, ``L``), in state-dict order,
    keys without ``module.``, from ``official_keys/glip_<variant>.tsv`` (lines ``key<TAB>(d0, d1)<TAB>torch.float32``).
    """
    return list(_parse_key_list(variant))


#: ``config.stash`` slot where tests/test_reference_fidelity.py records ``{stage: (max |diff|, tolerance)}``;
#: conftest.py prints it in the terminal summary.
FIDELITY_REPORT_KEY = pytest.StashKey[dict[str, tuple[float, float]]]()
