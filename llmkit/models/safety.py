"""What loading a model may run on this machine: pickle weights and remote code, both off unless a config turns
them on (`model.allow_pickle`, `model.trust_remote_code`). No heavy imports here.

Weights load from safetensors only: a torch pickle (pytorch_model.bin, *.pt, *.pth, *.ckpt) can run arbitrary
code when it is unpickled. The Trainer's own resume files (optimizer.pt, scheduler.pt, rng_state.pth), which
llmkit's runs write themselves, are not model weights and are left to the Trainer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from llmkit.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Pickle files a folder may hold beside its weights: the Trainer's own (training_args.bin in model/, the
# resume state in checkpoints) — never loaded as model weights.
NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")
MODEL_SAFE = ("model.safetensors", "model.safetensors.index.json")
ADAPTER_SAFE = ("adapter_model.safetensors",)
PICKLE_FIRST = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


def pickle_weights(path: str | Path, safe_names: tuple[str, ...] = MODEL_SAFE) -> Path | None:
    """The pickle weights a local model folder (or file) would load from, when it has no safetensors weights."""
    path = Path(path)
    if path.is_file():
        return path if path.name.endswith(PICKLE_SUFFIXES) else None
    if not path.is_dir() or any((path / name).is_file() for name in safe_names):
        return None
    found = [p for p in path.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES + (".bin.index.json",))
             and not p.name.startswith(NOT_WEIGHTS)]
    found.sort(key=lambda p: (p.name not in PICKLE_FIRST, p.name))
    return found[0] if found else None


def option_key(model_cfg: Any, name: str) -> str:
    """The config key of a model option, e.g. model.allow_pickle or distill.student.allow_pickle."""
    return f"{getattr(model_cfg, 'option_prefix', 'model.')}{name}"


def pickle_refusal(found: Path, allow_key: str) -> str:
    return (f"{found} is a pickle file (torch.save format). Unpickling it can run arbitrary code on this machine, so "
            "llmkit loads weights from safetensors files only. Fix: convert it once where you trust it (load it and "
            "call save_pretrained, which writes model.safetensors), or, if you trust its source, set "
            f"{allow_key}=true.")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def weights_kwargs(key: str, path: str | Path, allow_pickle: bool, allow_key: str,
                   safe_names: tuple[str, ...] = MODEL_SAFE) -> dict:
    """from_pretrained's `use_safetensors` for `path`: True (safetensors only, also for hub ids) unless pickle
    weights are allowed. A local folder whose only weights are a pickle is refused here, naming the file; with
    `allow_pickle` it loads, with a warning."""
    found = pickle_weights(path, safe_names)
    if found is None:
        if allow_pickle and not Path(path).exists():  # a hub id: which file loads is only known in transformers
            warn(f"{allow_key}=true: if {str(path)!r} has no safetensors weights, its pickle weights "
                 "(pytorch_model.bin) are unpickled, which runs any code they hold; only for repositories you trust.")
        return {} if allow_pickle else {"use_safetensors": True}
    if not allow_pickle:
        raise UserError(f"{key}: {pickle_refusal(found, allow_key)}")
    warn(f"loading pickle weights {found} ({allow_key}=true): unpickling runs any code the file holds; "
         "only do this for files you trust.")
    return {}


def is_safetensors_missing(error: BaseException) -> bool:
    """transformers' error for a hub model that has pickle weights only, under use_safetensors=True."""
    return "cannot be loaded with `safetensors`" in str(error)


def hub_pickle_refusal(name: str, allow_key: str) -> str:
    return (f"no safetensors weights (model.safetensors) for {name!r}, on the hub or (offline) in the local cache. "
            "llmkit does not load pickle weights (pytorch_model.bin): unpickling them can run arbitrary code on this "
            "machine. Fix: use a revision or copy of the model with safetensors weights (offline: download them "
            f"first), or, if you trust its source, set {allow_key}=true.")


def is_remote_code_refusal(error: BaseException) -> bool:
    """transformers' error for a model whose config.json names its own code (auto_map) under
    trust_remote_code=False; raised before any of that code is imported."""
    return "contains custom code which must be executed" in str(error)


def remote_code_refusal(label: str, trust_key: str) -> str:
    return (f"{label!r} ships its own Python code (config.json's auto_map names modules of the model), and llmkit "
            "does not run a model's code unless a config allows it; none of it was run. Fix: use a model that "
            "transformers supports without custom code, or, if you trust its source (read those files first), set "
            f"{trust_key}=true.")


def remote_code_warning(settings: dict) -> str | None:
    """The warning for a resolved config (plain dict) that turns trust_remote_code on anywhere, else None."""
    keys = [key for key, value in _flatten(settings) if key.rsplit(".", 1)[-1].endswith("trust_remote_code")
            and value is True]
    if not keys:
        return None
    return (f"{', '.join(keys)} is on: Python code from the model repository (its own modeling or tokenizer "
            "files) will be downloaded and run on this machine, with your permissions. Use it only for "
            "repositories you trust, ideally pinned to a reviewed commit with model.revision.")


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(data, dict):
        return [(prefix, data)]
    return [pair for key, value in data.items() for pair in _flatten(value, f"{prefix}.{key}" if prefix else key)]
