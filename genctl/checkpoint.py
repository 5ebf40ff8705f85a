"""The checkpoint format: one file, written atomically, loaded without running code.

A checkpoint is a dict of tensors and plain values (``torch.load(weights_only=True)`` reads it,
so a checkpoint can never run code): format tag and version, genctl and plugin versions, the
resolved recipe, the step, network and EMA weights, optimizer and scheduler states, the
objective's state, RNG states, the data position and the MLflow run id. The final model of a run
is the same format without the training state.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from genctl.errors import BadInput

FORMAT = "genctl-checkpoint"
VERSION = 1
LAST = "checkpoints/last.pt"  # artifact paths inside a run
BEST = "checkpoints/best.pt"
FINAL = "model/final.pt"


def save(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename): a failed or
    interrupted write, a full disk or a killed process leave the previous file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write(payload: dict[str, Any], f) -> None:
    """Serialise ``payload`` (tagged with the format) to a path or a binary file object.

    A path is written through a Python file and fsynced, so a full disk is an ``OSError`` with
    ``errno.ENOSPC`` (``torch.save`` given the path itself reports it as an opaque RuntimeError)
    and the bytes are on disk before the caller renames the file into place.
    """
    tagged = {"format": FORMAT, "format_version": VERSION, **payload}
    if not isinstance(f, str | os.PathLike):
        torch.save(tagged, f)
        return
    with open(f, "wb") as out:
        torch.save(tagged, out)
        out.flush()
        os.fsync(out.fileno())


def nbytes(payload: Any) -> int:
    """About how many bytes ``payload`` takes in a checkpoint: its tensors' storages, once each."""
    seen: set[tuple[str, int]] = set()
    total = 0
    stack = [payload]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            key = (str(x.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list | tuple):
            stack.extend(x)
    return total


def load(path: str | Path) -> dict[str, Any]:
    """Read a genctl checkpoint; missing, corrupt or foreign files are bad input."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(
            f"checkpoint {str(path)!r} not found", "Give the path of a .pt file written by genctl."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file it cannot read (UnpicklingError,
        # BadZipFile, EOFError; a text file: KeyError): all of them mean "not a checkpoint"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, KeyError):  # torch's legacy reader on a file of another kind
            first = "not a file torch.save wrote"
        raise BadInput(
            f"{path} is not a readable genctl checkpoint (corrupt, truncated or unsafe): {first[:200]}",
            "Use another checkpoint of the run (checkpoints/last.pt, model/final.pt) or retrain.",
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise BadInput(
            f"{path} is not a genctl checkpoint (no '{FORMAT}' tag)",
            "genctl reads only checkpoints it wrote; to start from foreign weights, convert them first.",
        )
    if ckpt.get("format_version", 0) > VERSION:
        raise BadInput(
            f"{path} was written by a newer genctl (format {ckpt['format_version']} > {VERSION})",
            "Upgrade genctl to read it.",
        )
    return ckpt


def check_family(ckpt: dict[str, Any], plugin: str, path: str | Path) -> None:
    """A checkpoint continues only a run of its own family (two families' networks may even
    share names and shapes, and load without a complaint)."""
    theirs = ckpt.get("plugin")
    if theirs and theirs != plugin:
        raise BadInput(
            f"{path} is a checkpoint of a {theirs} model, but the recipe trains {plugin}",
            "Resume a run with its own recipe (genctl train --resume RUN_ID, no recipe), "
            f"or give a checkpoint of a {plugin} run.",
        )
