"""The two kinds of error the CLI tells apart.

``BadInput`` (exit 2): the user gave something wrong — a recipe key, an option, a path, a file.
The message says what is wrong and where; the hint says how to fix it. No traceback.
``RunFailure`` (exit 1): something broke while running.
"""

from __future__ import annotations


class GenctlError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  {self.hint}"


class BadInput(GenctlError):
    """Wrong input from the user: exit code 2."""

    exit_code = 2


class RunFailure(GenctlError):
    """A failure while running: exit code 1."""

    exit_code = 1
