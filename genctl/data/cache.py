"""The on-disk cache of decoded datasets.

A decoded dataset is stored as one ``.pt`` file of uint8 tensors under ``$GENCTL_CACHE``
(default ``~/.cache/genctl/data``), named by a fingerprint of what produced it: the files
(names, sizes, mtimes), every setting that changes the decoded pixels, and the versions of
the decoders. Files are written atomically (a temporary file, then a rename), so a crash or
two ranks writing at once never leave a half-written entry; a damaged entry is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the decoded result of the same inputs changes


def cache_dir() -> Path:
    return Path(os.environ.get("GENCTL_CACHE") or Path.home() / ".cache" / "genctl" / "data")


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (file stamps, settings)."""
    import PIL

    blob = json.dumps([FORMAT, PIL.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load(name: str) -> dict[str, Any] | None:
    path = cache_dir() / f"{name}.pt"
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged entry: decode again and overwrite it
        log.warning("ignoring unreadable data cache %s: %s", path, exc)
        return None


def save(name: str, payload: dict[str, Any]) -> Path | None:
    """Write atomically; a cache that cannot be written is skipped with a warning."""
    folder = cache_dir()
    path = folder / f"{name}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("could not write data cache %s: %s", path, exc)
        return None
    return path
