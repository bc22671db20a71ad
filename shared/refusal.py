"""How a command refuses: one line on stderr, ``error: <what is wrong, and the fix>``, and exit
status 2, as ``experiments/run.py`` and ``experiments/pack.py`` end a refused start.

Torch-free: the analysis layer refuses through it too.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from shared.io import os_error_line


class Refused(SystemExit):
    """A command's refusal. Its exit status is 2 and ``str()`` is its line, so a caller that
    runs the command in-process (a test, a launcher) still sees why."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return f"error: {self.message}"

    def __reduce__(self):  # pickled back from a submitit job: keep the message, not the code
        return (Refused, (self.message,))


def refuse(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2 (raises :class:`Refused`).
    The line is printed here, because the interpreter prints nothing for an integer status."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise Refused(message)


def cannot(verb: str, path: str | os.PathLike, e: OSError) -> str:
    """``cannot write /x/y: Permission denied (EACCES); <fix>``: the path, what the errno
    means and what to do (``shared.io.os_error_line``)."""
    return f"cannot {verb} {os_error_line(e, os.fspath(path))}"
