"""glip_d2: GLIP / GLIPv2 grounded language-image detection as a detectron2 extension.

Importing the package applies the detectron2 compatibility shims and registers every component
(meta-architecture, backbones, language encoders, fusion modules, ROI heads, datasets) in detectron2's registries.
"""
__version__ = "0.1.0"

from . import compat as _compat

_compat.install()

from . import checkpoint, data, evaluation, modeling  # noqa: E402,F401  (registry side effects, glip_d2:// URLs)
from .config import add_glip_config  # noqa: E402

__all__ = ["add_glip_config", "__version__"]
