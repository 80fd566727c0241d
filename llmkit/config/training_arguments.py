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

from llmkit.errors import first_line

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class TrainingArgumentsError(Exception):
    """TrainingArguments rejected a combination of settings; `key` is the train-section field, if known."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX), where autocast pays off."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = set(re.findall(r"\b\w+\b", cpuinfo.read_text().split("flags", 1)[-1].split("\n", 1)[0]))
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_precision(requested: str) -> str:
    """`auto` -> bf16 on GPUs and CPUs that run it fast, else fp32; explicit choices pass through."""
    if requested != "auto":
        return requested
    if cuda_available():
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


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
