"""How many CPU threads a training process uses, so that several on one machine share its cores.

PyTorch starts one intra-op thread per core in every process: three runs on a two-core machine
then run six busy threads on two cores and each is several times slower than alone. genctl
instead divides the cores among the genctl training processes on the machine:

1. ``train.threads`` in the recipe, when given, is used as it is;
2. else ``OMP_NUM_THREADS`` from the environment (torchrun sets it for its ranks; a user may too);
3. else the cores this process may run on, divided by the training processes on the machine
   (at least 1): torchrun's ``LOCAL_WORLD_SIZE`` under torchrun; otherwise the live entries of a
   registry of independent runs (this one included).

The registry is a folder in the temporary directory, private to the user, holding one file per
running ``genctl train``: named by its process id, holding the process's start time (Linux's
``/proc/PID/stat``), and removed when the run ends. An entry whose process is gone, or whose
process id now belongs to a process started at another time (a crash, then the id reused),
is stale: it is not counted and is removed by the next process that counts. No lock is needed:
each process writes only its own file. The count is taken when a run starts, so a run started
later takes the cores the earlier ones left; the earlier ones keep their number of threads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int, processes: int) -> int:
    """The cores divided by the training processes on the machine, at least one."""
    return max(1, cores // max(1, processes))


def registry_dir() -> Path:
    """Where running trainings register (one folder per user)."""
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"genctl-train-{uid}"


def _start_time(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot), or "" where not known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else ""  # field 22 of proc(5): starttime


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, so not ours any more
        return False
    except OSError:
        return False
    return not started or _start_time(pid) == started


def live_trainings(folder: Path | None = None) -> int:
    """The registered training processes still running; stale entries are removed."""
    folder = folder or registry_dir()
    count = 0
    for entry in folder.glob("*.pid") if folder.is_dir() else ():
        try:
            pid, started = int(entry.stem), entry.read_text().strip()
        except (ValueError, OSError):
            continue
        if _alive(pid, started):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return count


@contextmanager
def registered(folder: Path | None = None) -> Iterator[int]:
    """This process listed as a running training while inside; yields how many are running,
    this one included."""
    folder = folder or registry_dir()
    entry = None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        entry = folder / f"{os.getpid()}.pid"
        entry.write_text(_start_time(os.getpid()))
    except OSError:  # a read-only temp dir: count nothing, lose nothing
        entry = None
    try:
        yield max(1, live_trainings(folder))
    finally:
        if entry is not None:
            entry.unlink(missing_ok=True)


def choose_threads(
    configured: int | None,
    env: Mapping[str, str],
    cores: int,
    processes: int,
) -> tuple[int, str]:
    """The number of threads and why (see the module docstring for the order). ``processes``:
    the independent trainings running, used when ``LOCAL_WORLD_SIZE`` is not in ``env``."""
    if configured:
        return configured, "train.threads"
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    local = env.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) > 0:
        n = int(local)
        return default_threads(cores, n), f"{cores} cores / {n} ranks on this node"
    return default_threads(cores, processes), f"{cores} cores / {processes} genctl trainings"


@contextmanager
def training_threads(configured: int | None) -> Iterator[tuple[int, str]]:
    """Register this training, set torch's intra-op threads as :func:`choose_threads` says, and
    unregister on the way out, with torch's threads as they were. Yields ``(threads, why)``."""
    import torch

    before = torch.get_num_threads()
    with registered() as running:
        n, why = choose_threads(configured, os.environ, cores(), running)
        torch.set_num_threads(n)
        try:
            yield n, why
        finally:
            torch.set_num_threads(before)
