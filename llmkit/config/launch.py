"""Distributed-launch configs: accelerate config files (ZeRO-2/3, FSDP) and DeepSpeed JSON for train.deepspeed.

Neither DeepSpeed nor a GPU is needed to check them: accelerate's own ClusterConfig parses the file (it refuses
unknown top-level keys); the nested deepspeed_config / fsdp_config keys, which accelerate only reads at launch
time, are checked here against `accelerate launch`'s own options.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigIssue

ACCELERATE_KEYS = ("distributed_type", "compute_environment")
ZERO_STAGES = (0, 1, 2, 3)


def is_accelerate_config(data: Any) -> bool:
    """An accelerate config file (as written by `accelerate config`), not an llmkit recipe config."""
    return isinstance(data, dict) and any(key in data for key in ACCELERATE_KEYS)


def _launch_options(prefixes: tuple[str, ...]) -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {a.dest for a in launch_command_parser()._actions if a.dest.startswith(prefixes)}


def _unknown(section: str, keys: list[str], known: set[str]) -> list[ConfigIssue]:
    issues = []
    for key in sorted(set(keys) - known):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(known))}."
        issues.append(ConfigIssue(f"{section}.{key}", f"not an `accelerate launch` option; {hint}"))
    return issues


def check_accelerate_config(path: Path) -> list[ConfigIssue]:
    """Every problem of an accelerate config file; empty when `accelerate launch --config_file` can use it."""
    from accelerate.commands.config.config_args import ClusterConfig

    try:
        config = ClusterConfig.from_yaml_file(str(path))
    except (ValueError, TypeError, KeyError) as e:
        return [ConfigIssue("", f"accelerate cannot read it: {str(e).strip().splitlines()[0]}")]
    issues = []
    kind = getattr(config.distributed_type, "value", config.distributed_type)
    deepspeed = config.deepspeed_config or {}
    fsdp = config.fsdp_config or {}
    issues += _unknown("deepspeed_config", list(deepspeed),
                       _launch_options(("zero", "offload", "deepspeed", "gradient")))
    issues += _unknown("fsdp_config", list(fsdp), _launch_options(("fsdp",)))
    if kind == "DEEPSPEED":
        if deepspeed.get("zero_stage") not in ZERO_STAGES and "deepspeed_config_file" not in deepspeed:
            issues.append(ConfigIssue("deepspeed_config.zero_stage", f"expected one of 0, 1, 2, 3; got "
                                      f"{deepspeed.get('zero_stage')!r}."))
    elif deepspeed:
        issues.append(ConfigIssue("deepspeed_config", f"set but distributed_type is {kind}; use DEEPSPEED."))
    if kind == "FSDP" and fsdp.get("fsdp_version", 1) not in (1, 2):
        issues.append(ConfigIssue("fsdp_config.fsdp_version", f"expected 1 or 2; got {fsdp['fsdp_version']!r}."))
    elif kind != "FSDP" and fsdp:
        issues.append(ConfigIssue("fsdp_config", f"set but distributed_type is {kind}; use FSDP."))
    if not isinstance(config.num_processes, int) or config.num_processes < 1:
        issues.append(ConfigIssue("num_processes", f"expected a whole number >= 1; got {config.num_processes!r}."))
    return issues


def check_deepspeed(value: Any) -> list[ConfigIssue]:
    """train.deepspeed: a DeepSpeed JSON file or an inline dict, as TrainingArguments takes it."""
    key = "train.deepspeed"
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_file():
            return [ConfigIssue(key, f"no DeepSpeed config file at {value!r}; give a JSON file (e.g. "
                                     "configs/accelerate/deepspeed-zero2.json) or an inline mapping.")]
        try:
            value = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            return [ConfigIssue(key, f"{path} is not valid JSON ({e}).")]
    if not isinstance(value, dict):
        return [ConfigIssue(key, f"expected a JSON file path or a mapping; got {type(value).__name__}.")]
    stage = (value.get("zero_optimization") or {}).get("stage", 0)
    if stage not in ZERO_STAGES:
        return [ConfigIssue(key, f"zero_optimization.stage must be 0, 1, 2 or 3; got {stage!r}.")]
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:  # checked here so a run fails before its directory exists
        return [ConfigIssue(key, "the config is valid, but the deepspeed package is not installed here; pip "
                                 "install deepspeed (CUDA machines), or drop train.deepspeed.")]
    return []
