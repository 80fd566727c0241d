"""From llmkit's `train:` section to HF `TrainingArguments`: precision resolved for this machine, the device,
choices and combinations checked with the `train.` key named. Config validation builds them once to check a
config; a run builds them for its trainer."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Any

from llmkit.errors import UserError, first_line

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class TrainingArgumentsError(Exception):
    """TrainingArguments rejected a combination of settings; `key` is the train-section field, if known."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX). Necessary for bf16 to pay,
    not sufficient: `cpu_bf16_speedup` times it."""
    return any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    return set(re.findall(r"\b\w+\b", cpuinfo.read_text().split("flags", 1)[-1].split("\n", 1)[0]))


# bf16 autocast adds weight casts and their gradients' casts around every matmul, so its matmuls must be clearly
# faster than fp32 ones before it pays: with AMX they ran 4-9 x fp32; with AVX512-BF16 alone 1.5 x on one machine
# and 0.57 x on another (where fp32 training was 1.5 x faster than bf16 autocast). The flags cannot tell those
# apart; a timing can.
CPU_BF16_MIN_SPEEDUP = 1.25
CPU_BF16_ENV = "LLMKIT_CPU_BF16"
CPU_PRECISION_FILE = "cpu-precision.json"


def matmul_seconds(dtype, size: int, reps: int) -> float:
    import time

    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # first call: kernel selection
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return time.perf_counter() - start


def time_cpu_bf16_speedup(size: int = 768, reps: int = 4, rounds: int = 5) -> float:
    """fp32 time / bf16 time of the same square matmuls, the best of `rounds` alternating rounds each (so a
    busy machine slows both sides alike); about 0.2 s on 2 cores."""
    import torch

    fp32 = bf16 = float("inf")
    for _ in range(rounds):
        fp32 = min(fp32, matmul_seconds(torch.float32, size, reps))
        bf16 = min(bf16, matmul_seconds(torch.bfloat16, size, reps))
    return fp32 / bf16


def _cpu_identity() -> str:
    import torch

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    return "|".join([model, " ".join(sorted(_cpu_flags())), torch.__version__, str(torch.get_num_threads())])


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times faster bf16 matmuls run than fp32 ones on this CPU at this thread count; 0.0 without bf16
    instructions. Timed once per machine and kept in $LLMKIT_CACHE/cpu-precision.json (keyed on the CPU model,
    its flags, the torch version and the thread count), under a file lock so every rank of a multi-process
    launch reads the same figure. LLMKIT_CPU_BF16=1 or 0 decides without timing (recorded as 9.0 or 0.0)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise UserError(f"{CPU_BF16_ENV}={forced!r}: expected 1 (bf16 autocast for precision: auto on this CPU) "
                            f"or 0 (fp32). Unset it to let llmkit time the CPU once.")
        return 9.0 if forced == "1" else 0.0
    if not cpu_has_fast_bf16():
        return 0.0
    import fcntl
    import json

    from llmkit.data.cache import cache_root

    path = cache_root(None).parent / CPU_PRECISION_FILE
    key = _cpu_identity()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                known = json.loads(path.read_text()) if path.is_file() else {}
            except ValueError:  # not JSON (a torn or hand-edited file): timed again and rewritten below
                known = {}
            if not isinstance(known, dict):
                known = {}
            if not isinstance(known.get(key), (int, float)):
                known[key] = round(time_cpu_bf16_speedup(), 3)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(known, indent=1))
                os.replace(tmp, path)
            return float(known[key])
    except OSError:  # a read-only cache: time it for this process only
        return round(time_cpu_bf16_speedup(), 3)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_precision(requested: str) -> str:
    """`auto` -> bf16 on GPUs that support it and on CPUs whose bf16 matmuls are timed at least
    CPU_BF16_MIN_SPEEDUP x fp32's, else fp32; explicit choices pass through."""
    if requested != "auto":
        return requested
    if cuda_available():
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP else "fp32"


def auto_precision_reason() -> str:
    """Why `precision: auto` resolved as it did on this machine, for the run's plan line and `llmkit info`."""
    if cuda_available():
        return "GPU bf16 support"
    speedup = cpu_bf16_speedup()
    if os.environ.get(CPU_BF16_ENV, "").strip():
        return f"{CPU_BF16_ENV}={os.environ[CPU_BF16_ENV].strip()}"
    if not cpu_has_fast_bf16():
        return "no bf16 instructions on this CPU"
    return (f"bf16 matmuls {speedup:.2f} x fp32 on this CPU, timed once; bf16 needs >= {CPU_BF16_MIN_SPEEDUP}")


def make_training_arguments(train_cfg: Any, output_dir: str, **overrides: Any):
    """Build `TrainingArguments` from a `TrainConfig`; errors name the offending `train.` key."""
    from transformers import TrainingArguments

    kwargs = dict(train_cfg.passthrough)
    _check_choices(kwargs)
    hub_token = kwargs.pop("hub_token", None)
    if hub_token:  # the hub reads it from HF_TOKEN; in TrainingArguments it would be pickled into training_args.bin
        os.environ["HF_TOKEN"] = hub_token
    precision = resolve_precision(train_cfg.precision)
    kwargs.update(bf16=precision == "bf16", fp16=precision == "fp16")
    # llmkit draws its own progress (training/progress.py); train.disable_tqdm: true turns its live bar into step
    # lines. transformers would otherwise derive the flag from its log level, which llmkit lowers.
    kwargs.setdefault("disable_tqdm", False)
    if "use_cpu" not in kwargs and not cuda_available():
        kwargs["use_cpu"] = True  # also what makes CPU DDP real under torchrun/accelerate
    kwargs.update(overrides)
    try:
        return TrainingArguments(output_dir=output_dir, **kwargs)
    except (ValueError, TypeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingArgumentsError(_guess_key(message, kwargs), f"TrainingArguments rejected it: {message}") from e
    except OSError as e:  # a file-valued setting (train.accelerator_config, train.fsdp_config) that is not there
        named = [k for k, v in kwargs.items() if isinstance(v, str) and e.filename is not None
                 and v == str(e.filename)]
        raise TrainingArgumentsError(named[0] if named else _guess_key(str(e), kwargs),
                                     f"TrainingArguments could not read it ({str(e).splitlines()[0]}); give the path "
                                     "of an existing JSON file, or a mapping of its settings.") from e
    except ImportError as e:  # train.deepspeed without the package (transformers imports it right away)
        raise TrainingArgumentsError("deepspeed" if kwargs.get("deepspeed") else _guess_key(str(e), kwargs),
                                     f"needs a package that is not installed ({first_line(e)}); for DeepSpeed: "
                                     "pip install deepspeed (CUDA machines).") from e


def _check_choices(kwargs: dict) -> None:
    """Fields whose choices only HF's CLI parser checks (in Python a bad value is silently accepted)."""
    from transformers import TrainingArguments

    for f in dataclasses.fields(TrainingArguments):
        choices = f.metadata.get("choices")
        if kwargs.get(f.name) is not None and choices is not None and kwargs[f.name] not in choices:
            raise TrainingArgumentsError(f.name, f"expected one of: {', '.join(map(str, choices))}; got "
                                                            f"{kwargs[f.name]!r}.")


def _guess_key(message: str, kwargs: dict) -> str:
    named = [k for k in kwargs if re.search(rf"\b{re.escape(k)}\b", message)]
    return named[0] if named else ""
