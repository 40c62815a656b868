#!/usr/bin/env python
"""Convert an official GLIP checkpoint into a glip_d2 (detectron2) checkpoint.

    python tools/convert_glip_checkpoint.py glip_tiny_model_o365_goldg.pth glip_t_c_d2.pth
    python tools/convert_glip_checkpoint.py glip_large_model.pth --check      # what maps where, nothing written

Loads with weights_only=True (a file that would run code is refused), detects the variant from the keys, and
refuses to write when keys do not correspond in either direction. See glip_d2/checkpoint/cli.py.
"""
import sys

import glip_d2  # noqa: F401  (registers GLIP's models)
from glip_d2.checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
