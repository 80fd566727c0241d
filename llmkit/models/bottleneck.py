"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) for any HF transformer with a stack of blocks.

PEFT has no bottleneck-adapter method, hence this is written by hand. One generic implementation serves every
family: the adapter sites are found by the shapes of each block's linear layers (no per-architecture name
tables), and the adapters are applied with forward hooks on those projections, so the base model's parameter
names and state_dict keys stay untouched and a saved adapter holds only what was trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

CONFIG_NAME = "bottleneck_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ATTRIBUTE = "bottleneck_adapters"
PLACEMENTS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}


@dataclass
class BottleneckSettings:
    """Where the adapters go and how wide they are; validated on construction so bad configs fail early."""

    placement: str = "pfeiffer"  # "houlsby": after the attention sublayer AND after the FFN; "pfeiffer": FFN only
    reduction_factor: int = 16  # bottleneck width = hidden_size // reduction_factor (at least 1)
    activation: str = "relu"  # any key of transformers.activations.ACT2FN

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"bottleneck placement must be one of {sorted(PLACEMENTS)}, got {self.placement!r}")
        factor = self.reduction_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"bottleneck reduction_factor must be a positive integer, got {self.reduction_factor!r}")
        if self.activation not in ACT2FN:
            raise ValueError(f"bottleneck activation {self.activation!r} is unknown; choose one of {sorted(ACT2FN)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BottleneckSettings:
        """Build from a dict that may carry other keys too (the saved config holds sites, model_type, ...)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class BottleneckAdapter(nn.Module):
    """h -> h + up(act(down(h))). `up` starts at zero so that adding the adapter leaves the model exactly as it was."""

    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))

    def hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        """Forward hook for the projection this adapter follows. A bound method rather than a closure, so
        `copy.deepcopy(model)` rebinds the copied hook to the copied adapter."""
        return self(output)


def _dims(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear layer; GPT-2's Conv1D stores its weight as (in, out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.nx, module.nf
    return None


def _linears(block: nn.Module) -> list[tuple[str, int, int]]:
    """(name within block, in, out) of every linear layer in registration order, which is execution order in HF."""
    return [(name, *dims) for name, module in block.named_modules() if (dims := _dims(module)) is not None]


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no `config`; bottleneck adapters need a transformers model")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _hidden_size(model: nn.Module) -> int:
    hidden = getattr(_text_config(model), "hidden_size", None)
    if not isinstance(hidden, int):
        raise ValueError(f"{type(model).__name__}'s config has no integer hidden_size")
    return hidden


def _find_blocks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The ModuleList(s) of transformer blocks: length num_hidden_layers, every block holding linear layers.
    Encoder-decoder models of equal depth give two stacks; lists nested inside another stack are ignored."""
    n_layers = getattr(_text_config(model), "num_hidden_layers", None)
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    stacks = [(name, m) for name, m in lists
              if len(m) == n_layers and all(_linears(block) for block in m)]
    stacks = [(name, m) for name, m in stacks
              if not any(name.startswith(other + ".") for other, _ in stacks if other)]
    if not stacks:
        found = ", ".join(f"{name} ({len(m)})" for name, m in lists) or "none"
        raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}: no nn.ModuleList of "
                         f"num_hidden_layers={n_layers} blocks with linear layers (ModuleLists found: {found})")
    return stacks


def _block_sites(block: nn.Module, hidden: int) -> tuple[str, str]:
    """(attention output projection, FFN output projection) names within one block, found by shapes.

    The FFN output projection is the last linear mapping I -> H that directly follows the FFN's up projection(s)
    (one or more linears H -> I: c_fc; gate_proj + up_proj). The attention output projection is the last linear
    with out == H before those up projections. Walking back only over the contiguous H -> I run keeps GPT-2's
    fused qkv (H -> 3H) out of it even when I == 3H, and out < H (GQA k/v) never qualifies as an output.
    """
    linears = _linears(block)
    for down in range(len(linears) - 1, 0, -1):
        _, inner, out = linears[down]
        if out != hidden:
            continue
        start = down
        while start > 0 and linears[start - 1][1:] == (hidden, inner):
            start -= 1
        if start == down:
            continue
        attention = [name for name, _, o in linears[:start] if o == hidden]
        if not attention:
            raise ValueError(f"no attention output projection (out_features={hidden}) before the feed-forward "
                             f"up projection {linears[start][0]!r}; is intermediate_size equal to hidden_size?")
        return attention[-1], linears[down][0]
    shapes = ", ".join(f"{name} {i}->{o}" for name, i, o in linears)
    raise ValueError(f"no feed-forward block (H->I linears followed by I->H, H={hidden}) among: {shapes}")


def find_adapter_sites(model: nn.Module) -> list[tuple[str, str]]:
    """[(qualified module name, "attention" | "ffn")] for every block, in block order."""
    hidden = _hidden_size(model)
    sites = []
    for stack_name, stack in _find_blocks(model):
        for i, block in enumerate(stack):
            prefix = f"{stack_name}.{i}." if stack_name else f"{i}."
            try:
                attention, ffn = _block_sites(block, hidden)
            except ValueError as e:
                raise ValueError(f"cannot place bottleneck adapters in block {prefix[:-1]!r}: {e}") from None
            sites += [(prefix + attention, "attention"), (prefix + ffn, "ffn")]
    return sites


def _placed_sites(model: nn.Module, settings: BottleneckSettings) -> list[str]:
    kinds = PLACEMENTS[settings.placement]
    return [name for name, kind in find_adapter_sites(model) if kind in kinds]


def _trainable(model: nn.Module, entries: Iterable[str]) -> dict[str, nn.Module]:
    """{qualified name: module} for modules named by an entry (exactly, or as the tail after a '.')."""
    modules = [(name, m) for name, m in model.named_modules() if name and not name.startswith(ATTRIBUTE + ".")]
    matched: dict[str, nn.Module] = {}
    for entry in entries:
        hits = {name: m for name, m in modules if name == entry or name.endswith("." + entry)}
        if not hits:
            candidates = [name for name, _ in model.named_children() if name != ATTRIBUTE]
            raise ValueError(f"trainable module {entry!r} matches no module of {type(model).__name__}; "
                             f"top-level modules: {candidates}")
        matched.update(hits)
    return matched


def has_bottleneck(model: nn.Module) -> bool:
    return isinstance(getattr(model, ATTRIBUTE, None), nn.ModuleDict)


def add_bottleneck_adapters(model: nn.Module, settings: BottleneckSettings,
                            trainable_modules: Iterable[str] = ()) -> nn.Module:
    """Freeze the base, hook a zero-initialised adapter after each placed projection, and leave trainable only the
    adapters and `trainable_modules` (task heads, newly initialised layers). Modifies and returns `model`."""
    if has_bottleneck(model):
        raise ValueError(f"{type(model).__name__} already has bottleneck adapters")
    trainable_modules = list(trainable_modules)
    sites = _placed_sites(model, settings)
    heads = _trainable(model, trainable_modules)
    hidden = _hidden_size(model)
    width = max(1, hidden // settings.reduction_factor)

    for param in model.parameters():
        param.requires_grad_(False)
    for head in heads.values():
        for param in head.parameters():
            param.requires_grad_(True)

    adapters = nn.ModuleDict()
    for name in sites:
        projection = model.get_submodule(name)
        weight = projection.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.get_default_dtype()
        adapter = BottleneckAdapter(hidden, width, settings.activation).to(device=weight.device, dtype=dtype)
        adapters[name.replace(".", "__")] = adapter
        projection.register_forward_hook(adapter.hook)
    model.add_module(ATTRIBUTE, adapters)
    model._bottleneck_settings = settings
    model._bottleneck_sites = sites
    model._bottleneck_trainable_modules = trainable_modules
    return model


def _saved_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' and trainable modules' state_dict entries under the model's own state_dict keys."""
    state = getattr(model, ATTRIBUTE).state_dict(prefix=ATTRIBUTE + ".")
    for name, module in _trainable(model, model._bottleneck_trainable_modules).items():
        state.update(module.state_dict(prefix=name + "."))
    return state


def save_bottleneck(model: nn.Module, directory: str | Path) -> None:
    """Write the config and only the trained tensors; the frozen base is rebuilt from its own checkpoint."""
    from safetensors.torch import save_file

    if not has_bottleneck(model):
        raise ValueError(f"{type(model).__name__} has no bottleneck adapters to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"method": "bottleneck", **model._bottleneck_settings.to_dict(), "sites": model._bottleneck_sites,
              "trainable_modules": model._bottleneck_trainable_modules, "hidden_size": _hidden_size(model),
              "model_type": _text_config(model).model_type}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    # A fresh contiguous copy per tensor: safetensors refuses views and tensors sharing storage (tied heads).
    tensors = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in _saved_state(model).items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


def is_bottleneck_dir(directory: str | Path) -> bool:
    path = Path(directory) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("method") == "bottleneck"


def load_bottleneck(model: nn.Module, directory: str | Path) -> nn.Module:
    """Add the saved adapters to a freshly loaded base and load their weights; refuses a mismatched base before
    touching the model, and any missing, unexpected or reshaped tensor afterwards."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not is_bottleneck_dir(directory):
        raise ValueError(f"{directory} is not a bottleneck adapter directory (no {CONFIG_NAME} with method "
                         f"'bottleneck')")
    config = json.loads((directory / CONFIG_NAME).read_text())
    model_type, hidden = _text_config(model).model_type, _hidden_size(model)
    if (config.get("model_type"), config.get("hidden_size")) != (model_type, hidden):
        raise ValueError(f"bottleneck adapter in {directory} was trained on model_type={config.get('model_type')!r} "
                         f"hidden_size={config.get('hidden_size')}, but the model is model_type={model_type!r} "
                         f"hidden_size={hidden}")
    settings = BottleneckSettings.from_dict(config)
    sites = _placed_sites(model, settings)
    if sites != config.get("sites"):
        raise ValueError(f"bottleneck adapter in {directory} was saved for sites {config.get('sites')}, "
                         f"but this model's sites are {sites}")

    add_bottleneck_adapters(model, settings, config.get("trainable_modules", []))
    saved = load_file(str(directory / WEIGHTS_NAME))
    expected = _saved_state(model)
    problems = [f"missing {k}" for k in expected if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in expected]
    problems += [f"{k}: saved {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                 for k, v in saved.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise ValueError(f"{directory / WEIGHTS_NAME} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(saved, strict=False)
    return model
