"""Low-rank factorisation of Linear layers (truncated SVD) and the loader for models that hold such layers.

A factorised Linear W (out x in) becomes two: `first` (in -> r, no bias) holding sqrt(S_r) V_r^T and `second`
(r -> out, with W's bias) holding U_r sqrt(S_r), kept as an `nn.Sequential` under the layer's own name (weights
`<name>.0.weight`, `<name>.1.weight`, `<name>.1.bias`). The model's config records the ranks under
`llmkit_low_rank` ({module name: rank}); transformers builds models from their config alone, so plain
`from_pretrained` cannot build those layers: `from_pretrained` here (used by llmkit's model loading,
`llmkit.load_model` and `llmkit eval`) builds the model, swaps the factorised layers in and loads the weights.

Modules that load torch are imported inside the functions that use them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.models import dynamic_int8, pruned_heads

CONFIG_KEY = "llmkit_low_rank"


def matching_linears(model: Any, pattern: str, key: str) -> list[tuple[str, Any]]:
    """(name, Linear) of every Linear whose dotted name the regular expression `pattern` matches (re.search);
    a UserError listing some names when none does."""
    import torch

    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise UserError(f"{key}: {pattern!r} is not a valid regular expression: {e}.") from None
    linears = [(n, m) for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    found = [(n, m) for n, m in linears if regex.search(n)]
    if not found:
        shown = ", ".join(sorted({re.sub(r"\.\d+\.", ".N.", n) for n, _ in linears})[:8])
        raise UserError(f"{key}: {pattern!r} matches no Linear layer of this model; its Linear layers are named "
                        f"like {shown}.")
    return found


def choose_ranks(found: list[tuple[str, Any]], rank: int | None, energy: float | None, key: str) -> dict[str, int]:
    """The rank of each layer: `rank` (refused above min(out, in)), or the smallest rank whose singular values
    keep `energy` of the sum of squared singular values."""
    import torch

    ranks = {}
    for name, linear in found:
        full = min(linear.weight.shape)
        if rank is not None:
            if rank > full:
                raise UserError(f"{key}.rank: {rank} is larger than layer {name} ({linear.out_features} x "
                                f"{linear.in_features}, whose rank is at most {full}); choose a rank below {full} "
                                "(a factorization near full rank stores more than the layer).")
            ranks[name] = rank
            continue
        singular = torch.linalg.svdvals(linear.weight.detach().float())
        share = (singular ** 2).cumsum(0) / (singular ** 2).sum()
        ranks[name] = min(int((share < energy).sum()) + 1, full)
    return ranks


def saves_parameters(linear: Any, rank: int) -> bool:
    return rank * (linear.in_features + linear.out_features) < linear.in_features * linear.out_features


def _pair(in_features: int, out_features: int, rank: int, bias: bool, like: Any) -> Any:
    import torch

    kwargs = {"dtype": like.dtype, "device": like.device}
    return torch.nn.Sequential(torch.nn.Linear(in_features, rank, bias=False, **kwargs),
                               torch.nn.Linear(rank, out_features, bias=bias, **kwargs))


def _replace(model: Any, name: str, module: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def factorize(model: Any, ranks: dict[str, int]) -> None:
    """Replace each named Linear by its rank-r truncated SVD (two Linear layers); record the ranks in the config."""
    import torch

    for name, rank in ranks.items():
        linear = model.get_submodule(name)
        u, s, vh = torch.linalg.svd(linear.weight.detach().float(), full_matrices=False)
        root = s[:rank].sqrt()
        pair = _pair(linear.in_features, linear.out_features, rank, linear.bias is not None, linear.weight)
        with torch.no_grad():
            pair[0].weight.copy_(root[:, None] * vh[:rank])
            pair[1].weight.copy_(u[:, :rank] * root[None, :])
            if linear.bias is not None:
                pair[1].bias.copy_(linear.bias)
        _replace(model, name, pair)
    model.config.update({CONFIG_KEY: {**(getattr(model.config, CONFIG_KEY, None) or {}), **ranks}})


def saved_ranks(path: str | Path) -> dict[str, int] | None:
    """The ranks a saved model directory's config.json records, or None (also for hub ids)."""
    return _saved(path, CONFIG_KEY)


def _saved(path: str | Path, key: str) -> Any:
    """What a saved model directory's config.json records under `key`, or None (also for hub ids)."""
    import json

    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text()).get(key) if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None  # the usual loading reports a broken config.json


def from_pretrained(auto_cls: Any, path: str, **kwargs: Any) -> Any:
    """`auto_cls.from_pretrained(path, **kwargs)`, and for a model with low-rank layers: built from its config,
    the layers swapped in, the safetensors weights loaded strictly (same return shape, loading info included);
    a model with PyTorch dynamic int8 layers: `dynamic_int8.load`."""
    if dynamic_int8.saved_layers(path):
        return dynamic_int8.load(auto_cls, path, **kwargs)
    ranks = saved_ranks(path) or {}
    heads = _saved(path, pruned_heads.HEADS_KEY)
    if not ranks and not heads:
        return auto_cls.from_pretrained(path, **kwargs)
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
    options = {k: kwargs[k] for k in ("attn_implementation", "trust_remote_code") if k in kwargs}
    model = auto_cls.from_config(config, **options)
    pruned_heads.shrink_heads(model)
    for name, rank in ranks.items():
        linear = model.get_submodule(name)
        _replace(model, name, _pair(linear.in_features, linear.out_features, rank, linear.bias is not None,
                                    linear.weight))
    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        what = f"low-rank layers ({CONFIG_KEY}" if ranks else f"pruned attention heads ({pruned_heads.HEADS_KEY}"
        raise UserError(f"model.name_or_path: {path} records {what} in config.json) but its weights do not fit "
                        f"them (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.eval()
    if kwargs.get("output_loading_info"):
        return model, {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return model
