"""Resolve ``model.source`` strings to paths an engine can load."""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..settings import RuntimeSettings

BUILTIN_PREFIX = "builtin://"
PVC_PREFIX = "pvc://"
# Where the operator mounts a pvc:// source's claim in role pods: /models/CLAIM.
PVC_MOUNT_ROOT = Path("/models")


class ModelSourceError(ValueError):
    """A model source that cannot be used here; the message says why."""


def model_cache_dir() -> Path:
    """``IG_MODEL_CACHE``, read when called (a caller holding settings passes ``cache_dir``)."""
    return RuntimeSettings.load().model_cache


def _builtin_makers() -> dict[str, Callable[[Path], None]]:
    # Imported lazily: torch/transformers cost seconds to import.
    from .smollm2 import convert_smollm2
    from .tiny import make_tiny_llama

    return {"smollm2-135m-instruct": convert_smollm2, "tiny-llama": make_tiny_llama}


BUILTIN_NAMES = ("smollm2-135m-instruct", "tiny-llama")


def resolve_model_source(source: str, cache_dir: Path | None = None) -> str:
    """Return a local directory (or a hub id for ``hf://``) for ``source``.

    Builtin models are built once into ``cache_dir`` under a file lock, so
    several processes starting together build them once.
    """
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_NAMES:
            raise ModelSourceError(f"unknown builtin model {name!r}; known: {', '.join(BUILTIN_NAMES)}")
        return str(ensure_builtin(name, cache_dir or model_cache_dir()))
    if source.startswith("hf://"):
        return source.removeprefix("hf://")
    if source.startswith(PVC_PREFIX):
        return str(_mounted_claim(source))
    path = Path(source.removeprefix("file://")).expanduser()
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{source}: no config.json in {path}")
    return str(path)


def _mounted_claim(source: str) -> Path:
    """``pvc://CLAIM/PATH`` is ``/models/CLAIM/PATH`` inside a pod the operator rendered."""
    path = PVC_MOUNT_ROOT / source.removeprefix(PVC_PREFIX)
    if not path.is_dir():
        raise ModelSourceError(
            f"{source}: expected the claim mounted at {path}; pvc:// sources exist only in pods the operator creates"
        )
    return path


def ensure_builtin(name: str, cache_dir: Path) -> Path:
    """Build a builtin model into ``cache_dir/name`` unless it is already there."""
    target = cache_dir / name
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # built by another process meanwhile
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
        try:
            _builtin_makers()[name](staging)
            staging.chmod(0o755)
            staging.rename(target)  # atomic: a half-built model is never visible
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
