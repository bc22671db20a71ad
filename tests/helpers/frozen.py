"""The CPU a frozen record was made on: where it matches, results must be bitwise equal."""

import platform

import torch


def fingerprint() -> dict:
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
