"""Progress bars that suit both a terminal and a log file.

On a terminal this is tqdm. When the bar's stream is not a terminal (SLURM output, ``nohup``,
CI), tqdm would rewrite its line with ``\\r`` on every refresh, so a log gets a fragment per
step; here it writes a whole line at most every ``VQBENCH_LOG_INTERVAL`` seconds (60 by
default) and once at the end.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


class _LogLines(tqdm):
    _last_n = None

    def display(self, msg=None, pos=None):
        if msg is None and self.n == self._last_n:  # close() redraws the final state
            return True
        line = (msg or str(self)).strip()
        if line:
            self.fp.write(line + "\n")
            self.fp.flush()
        self._last_n = self.n
        return True


def progress_bar(*args, **kwargs) -> tqdm:
    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or (hasattr(stream, "isatty") and stream.isatty()):
        return tqdm(*args, **kwargs)
    interval = float(os.environ.get("VQBENCH_LOG_INTERVAL", 60))
    kwargs.update(mininterval=interval, maxinterval=interval, miniters=1, dynamic_ncols=False)
    kwargs.setdefault("ascii", True)
    return _LogLines(*args, **kwargs)
