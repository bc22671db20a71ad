"""Which precision a run computes in: bf16 autocast where the hardware has native bf16, fp32
elsewhere.

``precision=auto`` resolves per device, detected rather than assumed:

- CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer).
- CPU: the instruction-set flags of ``/proc/cpuinfo``: ``avx512_bf16`` or ``amx_bf16``
  (x86), ``bf16`` (aarch64). On this project's 2-core AMD EPYC (avx512_bf16) a 1536² GEMM
  ran at 95 GFLOP/s in fp32 and at 400 in bf16; on a CPU without these flags bf16 matmuls
  are emulated and many times slower than fp32, so ``auto`` keeps fp32 there.

Autocast runs matmuls and convolutions in bf16 and keeps reductions, softmax and the
optimiser's master weights in fp32 (the categorical heads accumulate in float32 too:
methods/head.py). The resolved value, never ``auto``, is what results and checkpoints record.
"""

from __future__ import annotations

import contextlib
import functools

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 'flags', aarch64 'Features'); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device_type: str) -> bool:
    """Does this device compute bf16 natively (not emulated)?"""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return any(f in cpu_flags() for f in CPU_BF16_FLAGS)
    return False


def resolve(setting: str, device_type: str) -> str:
    """``auto`` | ``fp32`` | ``bf16`` → ``fp32`` | ``bf16`` for this device."""
    if setting == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    if setting not in ("fp32", "bf16"):
        raise ValueError(f"precision {setting!r}: expected auto, fp32 or bf16")
    return setting


def autocast(device_type: str, precision: str):
    """bf16 autocast for ``precision == 'bf16'``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def legacy_train_precision(setting: str, device_type: str) -> str:
    """What ``optim.precision`` meant before CPU bf16 was detected (checkpoints and rows that
    predate the recorded value): bf16 only when asked for, or ``auto`` on CUDA."""
    return "bf16" if setting == "bf16" or (setting == "auto" and device_type == "cuda") else "fp32"


def fp32_without_tf32(device_type: str, sampling_precision: str) -> dict:
    """Under fp32 on CUDA, turn TF32 off for convolutions too: PyTorch allows it for cuDNN by
    default (``torch.backends.cudnn.allow_tf32``), so a VQ decoder's or the Inception's
    convolutions ran with 10-bit mantissas while a card said fp32. Returns the TF32 state
    ({matmul, cudnn}) to record. (Here, not in experiments/sample.py: submitit pickles that
    script's functions by value, and ``torch.backends.cudnn`` cannot be pickled.)"""
    import torch

    if device_type != "cuda":
        return {"matmul": False, "cudnn": False}  # no TF32 on a CPU
    if sampling_precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return {
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn": bool(torch.backends.cudnn.allow_tf32),
    }
