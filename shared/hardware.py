"""The processor a run or a sample file was computed on. Runs are bitwise deterministic on one
machine, not across processors: two CPUs with other vector units take other BLAS kernels, so
the same command gives other trajectories (docs/converged.md measures how far apart)."""

from __future__ import annotations

import platform


def processor_name(device_type: str = "cpu", index: int = 0) -> str:
    """The GPU's name on CUDA; on a CPU the model name Linux reports (/proc/cpuinfo), else
    what ``platform`` knows."""
    if device_type == "cuda":
        import torch

        return torch.cuda.get_device_name(index)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
