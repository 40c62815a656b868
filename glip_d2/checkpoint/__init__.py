"""Checkpoints: official GLIP conversion, safe loading, ``glip_d2://`` model-zoo URLs, ``GLIPCheckpointer``."""
from .architecture import KNOWN_ARCHITECTURES, Architecture, detect_architecture
from .checkpointer import (
    CONVERSION_INFO_KEY,
    GLIPCheckpointer,
    atomic_torch_save,
    resolve_weights_path,
)
from .convert import (
    ConversionResult,
    KeyComparison,
    compare_with_model,
    convert_official_checkpoint,
    convert_official_state_dict,
    is_official_state_dict,
    map_official_key,
    official_state_dict,
)
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    WeightsNotAvailableError,
    WrongVariantError,
)
from .hub import (
    ZOO_PREFIX,
    fetch_zoo_weights,
    register_path_handler,
    resolve_zoo_url,
    verify_file,
)
from .safe_load import load_checkpoint_file, sha256_of_file
from .weights_content import (
    checkpoint_provides_text_encoder,
    checkpoint_text_encoder_keys,
    resolve_text_pretrained,
)

register_path_handler()

__all__ = [
    "Architecture",
    "KNOWN_ARCHITECTURES",
    "detect_architecture",
    "GLIPCheckpointer",
    "CONVERSION_INFO_KEY",
    "atomic_torch_save",
    "resolve_weights_path",
    "ConversionResult",
    "KeyComparison",
    "compare_with_model",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "is_official_state_dict",
    "map_official_key",
    "official_state_dict",
    "CheckpointError",
    "CheckpointMismatchError",
    "ChecksumMismatchError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "WeightsNotAvailableError",
    "WrongVariantError",
    "ZOO_PREFIX",
    "fetch_zoo_weights",
    "resolve_zoo_url",
    "verify_file",
    "load_checkpoint_file",
    "sha256_of_file",
    "checkpoint_provides_text_encoder",
    "checkpoint_text_encoder_keys",
    "resolve_text_pretrained",
]
