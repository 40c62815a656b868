"""glip_d2: GLIP / GLIPv2 grounded language-image detection as a detectron2 extension.

Importing the package only registers its components (meta-architectures, backbones, language encoders, fusion
modules, ROI heads, datasets) in detectron2's registries and the ``glip_d2://`` path handler; it patches nothing in
NumPy, Pillow, torch or detectron2, so it may be imported before or after any of them. A detectron2 that cannot
import (v0.6 without its C++ ops, not patched by tools/install_env.sh) is reported with the fix.
"""
__version__ = "0.1.0"

from . import compat as _compat

_compat.check_detectron2_importable()

from . import checkpoint, data, evaluation, modeling  # noqa: E402,F401  (registry side effects, glip_d2:// URLs)
from .config import add_glip_config  # noqa: E402

__all__ = ["add_glip_config", "__version__"]
