"""`llmkit info`: versions, device, threads, and whether bf16 is fast on this machine (measured)."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

from llmkit.config.training_arguments import (
    auto_precision_reason,
    cpu_has_fast_bf16,
    matmul_seconds,
    resolve_precision,
)


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def _matmul_gflops(dtype, size: int = 512, reps: int = 20) -> float:
    return 2 * size**3 * reps / matmul_seconds(dtype, size, reps) / 1e9


def collect_info() -> dict:
    import torch


    out = {"llmkit": _version("llmkit"), "python": sys.version.split()[0]}
    out.update({pkg: _version(pkg) for pkg in ("torch", "transformers", "datasets", "accelerate", "evaluate", "peft")})
    out["platform"] = platform.platform()
    if torch.cuda.is_available():
        out["device"] = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
        out["bf16 supported"] = str(torch.cuda.is_bf16_supported())
    else:
        fp32, bf16 = _matmul_gflops(torch.float32), _matmul_gflops(torch.bfloat16)
        out["device"] = f"cpu, {torch.get_num_threads()} torch threads"
        out["cpu bf16 instructions"] = "yes (AVX512-BF16/AMX)" if cpu_has_fast_bf16() else "no"
        out["matmul GFLOP/s"] = f"fp32 {fp32:.0f}, bf16 {bf16:.0f} ({bf16 / fp32:.1f}x)"
    out["precision: auto ->"] = f"{resolve_precision('auto')} ({auto_precision_reason()})"
    return out
