"""Resolve ``glip_d2://NAME`` model-zoo URLs to local files (Hugging Face hub + its cache), with integrity checks.

Order: a file of the right name in the local weights folder (``$GLIP_D2_WEIGHTS_DIR``, default
``~/.cache/glip_d2/weights``), then ``huggingface_hub.hf_hub_download`` (which answers from its cache,
``$HF_HUB_CACHE``, without network when the file is there). Known sizes and sha256 are checked; a verified
sha256 is remembered (keyed by path, size and mtime) so multi-GB files are hashed once, not at every start.
Offline without the file, the error names the URL to fetch and the folder to put it in.
"""
import json
import logging
import os
import tempfile

from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from .catalog import ZOO_PREFIX, get_entry
from .errors import ChecksumMismatchError, WeightsNotAvailableError
from .safe_load import sha256_of_file

__all__ = ["ZOO_PREFIX", "weights_dir", "hub_url", "resolve_zoo_url", "fetch_zoo_weights", "verify_file"]

logger = logging.getLogger(__name__)



def _cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "glip_d2")


def weights_dir() -> str:
    """Folder searched first for model-zoo files (``$GLIP_D2_WEIGHTS_DIR`` or ``~/.cache/glip_d2/weights``)."""
    return os.environ.get("GLIP_D2_WEIGHTS_DIR") or os.path.join(_cache_root(), "weights")


def hub_url(entry) -> str:
    """Direct download URL of a model-zoo entry's file."""
    return f"https://huggingface.co/{entry.hf_repo}/resolve/{entry.revision or 'main'}/{entry.hf_filename}"


def _memo_path() -> str:
    return os.path.join(_cache_root(), "verified_sha256.json")


def _read_memo() -> dict:
    try:
        with open(_memo_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _remember(key: str, digest: str) -> None:
    memo = _read_memo()
    memo[key] = digest
    try:
        os.makedirs(os.path.dirname(_memo_path()), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(_memo_path()), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, _memo_path())
    except OSError:  # a read-only home only costs a re-hash next time
        pass


def verify_file(path: str, size: int | None, sha256: str | None, what: str = "") -> None:
    """Raise ``ChecksumMismatchError`` when the file's size or sha256 differs from the known value (None: skip)."""
    what = what or os.path.basename(path)
    actual_size = os.path.getsize(path)
    if size is not None and actual_size != size:
        raise ChecksumMismatchError(
            f"{path} has {actual_size} bytes but {what} has {size}: the download is incomplete or a different "
            "file. Delete it and download it again."
        )
    if sha256 is None:
        return
    real = os.path.realpath(path)
    key = f"{real}|{actual_size}|{os.stat(real).st_mtime_ns}"
    if _read_memo().get(key) == sha256.lower():
        return
    digest = sha256_of_file(path)
    if digest != sha256.lower():
        raise ChecksumMismatchError(
            f"{path} has sha256 {digest} but {what} has {sha256}: the file is corrupted or a different file. "
            "Delete it and download it again."
        )
    _remember(key, digest)


def fetch_zoo_weights(entry, *, cache_dir: str | None = None, local_files_only: bool | None = None) -> str:
    """Local path of a model-zoo entry's weights, downloading through the HF hub cache when needed."""
    local = os.path.join(weights_dir(), entry.hf_filename)
    what = f"model-zoo file {entry.name} ({entry.hf_repo}/{entry.hf_filename})"
    if os.path.isfile(local):
        verify_file(local, entry.size_bytes, entry.sha256, what)
        return local
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(
            entry.hf_repo, entry.hf_filename, revision=entry.revision, cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
    except Exception as e:  # offline, no network, missing from cache, hub errors: one actionable message
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise WeightsNotAvailableError(
            f"Cannot get {what}: it is not in {weights_dir()} nor in the Hugging Face cache"
            f"{' (' + cache_dir + ')' if cache_dir else ''}, and downloading failed ({type(e).__name__}: {cause}). "
            f"On a machine with internet, download {hub_url(entry)} and put it at {local} "
            "(or set GLIP_D2_WEIGHTS_DIR to the folder holding it), or set MODEL.WEIGHTS to the file's path."
        ) from None
    verify_file(path, entry.size_bytes, entry.sha256, what)
    return path


def resolve_zoo_url(url: str, *, cache_dir: str | None = None, local_files_only: bool | None = None) -> str:
    """``glip_d2://NAME`` -> local file path (see module docstring)."""
    if not url.startswith(ZOO_PREFIX):
        raise ValueError(f"Not a model-zoo URL (expected {ZOO_PREFIX}NAME): {url!r}")
    entry = get_entry(url[len(ZOO_PREFIX):])
    return fetch_zoo_weights(entry, cache_dir=cache_dir, local_files_only=local_files_only)


class GLIPZooHandler(PathHandler):
    """iopath handler so ``PathManager.get_local_path("glip_d2://GLIP-T_C")`` works anywhere in detectron2."""

    PREFIX = ZOO_PREFIX

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        return resolve_zoo_url(path)

    def _open(self, path, mode="r", **kwargs):
        return PathManager.open(self._get_local_path(path), mode, **kwargs)


def register_path_handler() -> None:
    """Register ``glip_d2://`` with detectron2's PathManager once."""
    if any(isinstance(h, GLIPZooHandler) for h in PathManager._path_handlers.values()):
        return
    PathManager.register_handler(GLIPZooHandler())
