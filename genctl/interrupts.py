"""Ctrl-C and SIGTERM, honoured within seconds wherever genctl is, without half-written files.

While :func:`handled` is in force, SIGINT and SIGTERM act according to where the main thread is:

- in an **abandonable** section (setup and data decoding, a sample grid, an evaluation, all of
  `genctl sample` and `genctl evaluate`): the work is thrown away at once, by raising
  :class:`Interrupted` there;
- in a **deferred** section (writing an image or a record that must be whole): the signal is held
  until the section ends, then acts as it would have outside it;
- anywhere else (a training step, a checkpoint write): the first signal only sets ``requested``,
  so the trainer finishes the step and saves the state of the last completed step; a second
  signal raises :class:`Interrupted` at once (stop without saving).

Checkpoints need no deferring: they are written to a temporary file and renamed into place, so an
interrupted write leaves the previous checkpoint as it was.

Python runs signal handlers in the main thread between bytecodes, so an abandonable section is
left as soon as the operation in progress (one network forward, say) returns.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGNAL_NAMES = tuple(sig.name for sig in SIGNALS)  # what a bare Interrupted says


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM abandoned the work in progress; the CLI exits 130.

    A ``KeyboardInterrupt``, so that ``except Exception`` (retry loops, plugin code) never
    swallows it.
    """


class Signals:
    """What the handler has seen, and which kind of section the main thread is in."""

    def __init__(self, abandon: bool = False) -> None:
        self.count = 0  # signals received
        self.name = ""  # the last one's name: SIGINT, SIGTERM
        self._abandon = 1 if abandon else 0  # depth of abandonable sections
        self._defer = 0  # depth of deferred sections
        self._pending = False  # a signal arrived inside a deferred section

    @property
    def requested(self) -> bool:
        """A signal arrived: stop after the work in progress."""
        return self.count > 0

    @property
    def forced(self) -> bool:
        """A second signal arrived: stop now, without saving."""
        return self.count > 1

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.name = signal.Signals(signum).name
        if self._defer:
            self._pending = True
        elif self._abandon or self.forced:
            raise Interrupted(self.name)

    def end_abandonable(self) -> None:
        """Close the abandonable section that ``handled(abandon=True)`` opened."""
        self._abandon -= 1

    @contextmanager
    def abandonable(self) -> Iterator[None]:
        """Work that a signal throws away: :class:`Interrupted` is raised inside it."""
        self._abandon += 1
        try:
            if self.requested:  # the signal came before the work began: do not begin it
                raise Interrupted(self.name)
            yield
        finally:
            self._abandon -= 1

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A write that must be whole: a signal inside it acts when it ends."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
        if not self._defer and self._pending:
            self._pending = False
            if self._abandon or self.forced:
                raise Interrupted(self.name)


_active: Signals | None = None  # the handler in force in the main thread, if any


@contextmanager
def handled(abandon: bool = False) -> Iterator[Signals]:
    """SIGINT and SIGTERM handled as the module docstring says while inside.

    ``abandon``: the whole body is an abandonable section (a command that saves nothing midway).
    Off the main thread, where Python cannot install handlers, signals keep their old behaviour.
    """
    global _active
    signals = Signals(abandon)
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    previous = _active
    old = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _active = signals
    try:
        for sig in SIGNALS:
            signal.signal(sig, signals._handle)
        yield signals
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _active = previous


@contextmanager
def abandonable() -> Iterator[None]:
    """:meth:`Signals.abandonable` of the handler in force (nothing without one)."""
    if _active is None:
        yield
        return
    with _active.abandonable():
        yield


@contextmanager
def deferred() -> Iterator[None]:
    """:meth:`Signals.deferred` of the handler in force (nothing without one)."""
    if _active is None:
        yield
        return
    with _active.deferred():
        yield


def interruptible(command):
    """Decorate a CLI command so that SIGINT and SIGTERM abandon it (exit 130)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with handled(abandon=True):
            return command(*args, **kwargs)

    return run
