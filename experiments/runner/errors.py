"""The ways a run stops early, each with a message that says what to do."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run cannot start or continue; the message says what to do."""


class RunRefused(RunError):
    """A launch is refused before it touches the run directory (lock held, config or data
    differ from the checkpoint's). The existing run's files stay as they were."""


class NonFiniteLossError(RunError):
    """Loss or weights became non-finite; the last finite checkpoint is kept."""


class RunInterrupted(RunError):
    """SIGTERM/SIGINT: the run checkpointed (when cheap) and stopped; relaunch to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
