"""Shared test settings: glip_d2 imported first (compat shims), offline hub, deterministic seeds."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import glip_d2  # noqa: E402,F401
