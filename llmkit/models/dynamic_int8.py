"""PyTorch's own dynamic int8 quantization of Linear layers (`torch.ao.quantization.quantize_dynamic`, x86 /
fbgemm kernels), saved as safetensors, and the loader for such models.

On this project's CPUs torchao 0.18's int8 kernels are slower than float32 (measured in
docs/commands/compress.md), while PyTorch's dynamic quantized Linear is faster. PyTorch stores those layers as
packed quantized tensors that only pickle can hold, so llmkit writes each one as plain tensors —
`<name>.weight_int8` (int8), `<name>.weight_scale`, `<name>.weight_zero_point` (one per output channel, or one
for the whole weight in files written before per-channel weights) and `<name>.bias` — in
model.safetensors, with the layer names under `llmkit_dynamic_int8` in config.json. Plain transformers cannot
load it; `from_pretrained` here builds the model from its config, quantizes the same layers and puts the saved
int8 weights in (llmkit's model loading, `llmkit.load_model` and `llmkit eval` use it).

`torch.ao.quantization` is deprecated in torch (its deprecation warning is kept off the terminal); it is present
and works in torch 2.13.

Modules that load torch are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.models import pruned_heads

CONFIG_KEY = "llmkit_dynamic_int8"
EMBEDDINGS_KEY = "llmkit_int8_embeddings"  # embedding tables stored as int8 rows on disk, float32 in memory
SUFFIXES = ("weight_int8", "weight_scale", "weight_zero_point", "bias")


def quantize(model: Any, embeddings: bool = False) -> list[str]:
    """Quantize every Linear of `model` (in place, float32 on the CPU) to dynamic int8 with one scale per output
    channel (PyTorch's `per_channel_dynamic_qconfig`: on SST-2 MiniLM it lost 0.69 points with one scale per
    weight, see docs/commands/compress.md; the fbgemm kernel runs either), and with `embeddings`
    round every embedding table to int8 rows (symmetric, one scale per row: the float32 table in memory then
    holds exactly what is saved and loaded; disk, not memory, shrinks); return the Linear layers' names."""
    import torch

    names = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    tables = [n for n, m in model.named_modules() if type(m) is torch.nn.Embedding] if embeddings else []
    with torch.no_grad():
        for name in tables:
            weight = model.get_submodule(name).weight
            scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
            weight.copy_((weight / scale[:, None]).round().clamp(-127, 127) * scale[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(
            model, dict.fromkeys(names, torch.ao.quantization.per_channel_dynamic_qconfig), dtype=torch.qint8,
            inplace=True)
    model.config.update({CONFIG_KEY: names, EMBEDDINGS_KEY: tables})
    return names


def _int8_rows(weight: Any) -> tuple[Any, Any]:
    """An embedding table rounded by `quantize` as (int8 rows, float32 scale per row), exactly."""
    import torch

    scale = (weight.detach().abs().amax(dim=1) / 127).clamp(min=1e-12)
    return (weight.detach() / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale.float()


def _quantized_weight(rows: Any, scale: Any, zero_point: Any) -> Any:
    """The int8 weight of a saved layer: one scale per output channel, or one for the whole weight."""
    import torch

    if scale.numel() == 1:
        return torch._make_per_tensor_quantized_tensor(rows, float(scale), int(zero_point))
    return torch._make_per_channel_quantized_tensor(rows, scale.double(), zero_point.long(), 0)


def save(model: Any, directory: Path) -> None:
    """model.safetensors (the quantized layers as plain tensors) and config.json of a quantized model."""
    import torch
    from safetensors.torch import save_file

    names = getattr(model.config, CONFIG_KEY)
    tables = getattr(model.config, EMBEDDINGS_KEY, None) or []
    inside = tuple(f"{name}." for name in names)  # the quantized layers' own packed entries are written below
    state = {key: value for key, value in model.state_dict().items() if isinstance(value, torch.Tensor)
             and not key.startswith(inside) and key not in {f"{t}.weight" for t in tables}}
    for table in tables:
        state[f"{table}.weight_int8"], state[f"{table}.weight_row_scale"] = _int8_rows(
            model.get_submodule(table).weight)
    for name in names:
        weight, bias = model.get_submodule(name)._packed_params._weight_bias()
        state[f"{name}.weight_int8"] = weight.int_repr().contiguous()
        if weight.qscheme() == torch.per_channel_affine:  # axis 0: the output channels
            state[f"{name}.weight_scale"] = weight.q_per_channel_scales().to(torch.float64).contiguous()
            state[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points().to(torch.int64).contiguous()
        else:
            state[f"{name}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
            state[f"{name}.weight_zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        if bias is not None:
            state[f"{name}.bias"] = bias.detach().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in state.items()}  # tied weights share storage; safetensors refuses that
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(directory)


def saved_layers(path: str | Path) -> list[str] | None:
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text()).get(CONFIG_KEY) if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def load(auto_cls: Any, path: str, **kwargs: Any) -> Any:
    """A saved dynamic-int8 model: built from its config, the same layers quantized, the weights loaded."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
    options = {k: kwargs[k] for k in ("attn_implementation", "trust_remote_code") if k in kwargs}
    model = auto_cls.from_config(config, **options)
    pruned_heads.shrink_heads(model)  # a BERT with pruned heads: the projections' pruned shapes
    names = getattr(config, CONFIG_KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(model, set(names), dtype=torch.qint8, inplace=True)
        state = load_file(str(Path(path) / "model.safetensors"))
        for name in names:
            try:
                weight = _quantized_weight(state.pop(f"{name}.weight_int8"), state.pop(f"{name}.weight_scale"),
                                           state.pop(f"{name}.weight_zero_point"))
            except KeyError as e:
                raise UserError(f"model.name_or_path: {path} records dynamic int8 layers ({CONFIG_KEY} in "
                                f"config.json) but its weights lack {e}.") from None
            model.get_submodule(name).set_weight_bias(weight, state.pop(f"{name}.bias", None))
    # load_state_dict would ask the quantized layers for entries of their own packed format: fill the rest directly
    for table in getattr(config, EMBEDDINGS_KEY, None) or []:
        rows, scale = state.pop(f"{table}.weight_int8", None), state.pop(f"{table}.weight_row_scale", None)
        if rows is None or scale is None:
            raise UserError(f"model.name_or_path: {path}: the int8 rows of embedding table {table} are missing.")
        state[f"{table}.weight"] = rows.float() * scale[:, None]
    inside = tuple(f"{name}." for name in names)
    own = [k for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and not k.startswith(inside)]
    unexpected = [key for key in state if key not in own]
    missing = [key for key in own if key not in state]
    with torch.no_grad():
        for key in own:
            if key in state:
                module, _, attribute = key.rpartition(".")
                getattr(model.get_submodule(module), attribute).copy_(state[key])
    if missing or unexpected:
        raise UserError(f"model.name_or_path: {path}: the saved dynamic int8 weights do not fit the model (missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}).")
    model.eval()
    if kwargs.get("output_loading_info"):
        return model, {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return model
