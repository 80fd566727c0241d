"""Model surgery for `llmkit compress`: structured pruning (attention heads, feed-forward neurons, whole layers)
scored by gradients, unstructured magnitude pruning, and torchao quantization.

Structured pruning leaves a smaller dense model of the same class whose config holds the new sizes, so plain
`from_pretrained` loads it. A config holds one head count and one feed-forward width for all layers, so the same
number of heads (and neurons) is removed from every layer, each layer choosing its own least important ones.
Heads: a Llama-family config has an explicit head size (`head_dim`), so fewer heads are written in its own
format. A BERT-family config derives the head size from hidden_size / num_attention_heads, so that count must
stay; the heads kept are recorded as `llmkit_attention_heads` in config.json and llmkit's loader
(`low_rank.from_pretrained`, used by every llmkit command and `llmkit.load_model`) builds the model with the
smaller projections (models/pruned_heads.py); plain transformers cannot load it. GPT-2 (Conv1D) is not pruned.

Modules that load torch are imported inside the functions that use them (the recipe's config class imports this
module's names without training).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from llmkit.errors import UserError
from llmkit.models.loading import transformer_blocks
from llmkit.models.pruned_heads import HEADS_KEY
from llmkit.models.quiet import silence_torchao_import

SUPPORTED = "BERT-family encoders and Llama-family decoders"
CPU_METHODS = ("int8-dynamic", "int8-weight-only", "torch-int8-dynamic")
TORCHAO_METHODS = ("int8-dynamic", "int8-weight-only")
GPU_METHODS = {"int4-weight-only": "torchao's int4 weight-only kernels need a CUDA GPU (on CPU, torchao 0.18 "
                                   "asks for the mslk package, which has no CPU build)",
               "float8-dynamic": "float8 matmuls need a CUDA GPU of compute capability 8.9 or newer"}
INSTALL = "pip install 'llmkit[compress]'"


@dataclass
class BlockParts:
    """One transformer block's projections: attention q/k/v in, o out; feed-forward in (one or two) and out."""

    attention: Any  # the module holding q, k, v (BERT `attention.self`, Llama `self_attn`)
    q: str
    k: str
    v: str
    output_owner: Any  # the module holding the attention output projection
    o: str
    ffn_in: list[tuple[Any, str]]
    ffn_out: tuple[Any, str]

    def linear(self, owner: Any, name: str) -> Any:
        return getattr(owner, name)


def block_parts(model: Any, key: str) -> list[BlockParts]:
    """The projections of every block; a UserError naming `key` for architectures llmkit cannot prune."""
    blocks = transformer_blocks(model)
    parts = []
    for block in blocks if blocks is not None else []:
        if hasattr(block, "attention") and hasattr(getattr(block.attention, "self", None), "query"):
            parts.append(BlockParts(block.attention.self, "query", "key", "value", block.attention.output, "dense",
                                    [(block.intermediate, "dense")], (block.output, "dense")))
        elif hasattr(block, "self_attn") and hasattr(getattr(block, "mlp", None), "down_proj"):
            parts.append(BlockParts(block.self_attn, "q_proj", "k_proj", "v_proj", block.self_attn, "o_proj",
                                    [(block.mlp, "gate_proj"), (block.mlp, "up_proj")], (block.mlp, "down_proj")))
        else:
            break
    if blocks is None or len(parts) != len(blocks):
        raise UserError(f"{key}: structured pruning knows {SUPPORTED}; {type(model).__name__} has another layout. "
                        "Use compress steps low_rank / quantize or prune.magnitude for it.")
    return parts


def head_layout(model_or_config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of every layer (a pruned BERT's kept heads)."""
    config = getattr(model_or_config, "config", model_or_config)
    size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    heads = getattr(config, HEADS_KEY, None) or config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads, size


def own_head_format(config: Any) -> bool:
    """Whether the config can hold fewer heads itself (an explicit head size: the Llama family)."""
    return getattr(config, "model_type", None) == "llama" or "head_dim" in config.to_dict()


def check_head_pruning(model: Any, remove: int, key: str) -> int:
    """The number of key/value groups removed per layer for `remove` query heads; UserError when impossible."""
    block_parts(model, key)  # a layout llmkit can prune (BERT or Llama family)
    heads, kv_heads, _ = head_layout(model)
    if remove >= heads:
        raise UserError(f"{key}: removing {remove} heads would prune every head of each layer (the model has "
                        f"{heads} per layer); remove at most {heads - 1}.")
    group = heads // kv_heads
    if remove % group:
        raise UserError(f"{key}: {heads} query heads share {kv_heads} key/value heads in groups of {group}, which "
                        f"are pruned together; {remove} is not a multiple of {group}.")
    return remove // group


def ffn_width(model: Any) -> int:
    return model.config.intermediate_size


# ---------------------------------------------------------------- importance (Michel et al. 2019)


@contextlib.contextmanager
def _gates(parts: list[BlockParts], units: int, which: str):
    """A gate of ones per layer and unit (head or neuron), multiplied into the input of the output projection;
    the gradient of the loss with respect to a gate is that unit's importance signal."""
    import torch

    gates = [torch.ones(units, requires_grad=True) for _ in parts]
    handles = []
    for part, gate in zip(parts, gates):
        owner, name = (part.output_owner, part.o) if which == "heads" else part.ffn_out

        def hook(module, args, gate=gate):
            x = args[0]
            shaped = x.view(*x.shape[:-1], units, -1) * gate.to(x.dtype)[:, None]
            return (shaped.view_as(x), *args[1:])

        handles.append(getattr(owner, name).register_forward_pre_hook(hook))
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def importance(model: Any, batches: list[dict], which: str, key: str) -> Any:
    """|d loss / d gate| summed over `batches`, per layer and unit: a (layers, units) tensor. `which`: heads
    (query heads) or neurons (feed-forward)."""
    import torch

    parts = block_parts(model, key)
    units = head_layout(model)[0] if which == "heads" else ffn_width(model)
    trainable = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    scores = torch.zeros(len(parts), units)
    try:
        with _gates(parts, units, which) as gates:
            for batch in batches:
                loss = model(**batch).loss
                grads = torch.autograd.grad(loss, gates)
                scores += torch.stack([g.abs() for g in grads])
    finally:
        for p, flag in zip(model.parameters(), trainable):
            p.requires_grad_(flag)
    return scores


def least_important(scores: Any, remove: int, group: int = 1) -> list[list[int]]:
    """Per layer, the `remove` units (in groups of `group` adjacent units) with the smallest summed score."""
    grouped = scores.view(scores.shape[0], -1, group).sum(-1)
    return [sorted(g * group + i for g in row.argsort()[: remove // group].tolist() for i in range(group))
            for row in grouped]


# ---------------------------------------------------------------- pruning


def _sliced(linear: Any, keep: Any, dim: int) -> Any:
    """A new Linear keeping rows (dim 0: outputs) or columns (dim 1: inputs) `keep`."""
    import torch

    weight = linear.weight.detach().index_select(dim, keep).clone()
    bias = linear.bias
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype,
                          device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach().index_select(0, keep) if dim == 0 else bias.detach())
    return new


def _kept(total: int, removed: list[int], size: int) -> Any:
    """Indices of the rows kept when units `removed` (each `size` rows wide) leave a tensor of `total` units."""
    import torch

    gone = set(removed)
    return torch.tensor([u * size + i for u in range(total) if u not in gone for i in range(size)])


def prune_heads(model: Any, removed: list[list[int]], key: str) -> None:
    """Remove query heads `removed[layer]` (whole key/value groups) from every layer; the config's head counts
    shrink accordingly."""
    parts = block_parts(model, key)
    heads, kv_heads, size = head_layout(model)
    group = heads // kv_heads
    for part, gone in zip(parts, removed):
        query = _kept(heads, gone, size)
        kv = _kept(kv_heads, sorted({h // group for h in gone}), size)
        setattr(part.attention, part.q, _sliced(getattr(part.attention, part.q), query, 0))
        for name in (part.k, part.v):
            setattr(part.attention, name, _sliced(getattr(part.attention, name), kv, 0))
        setattr(part.output_owner, part.o, _sliced(getattr(part.output_owner, part.o), query, 1))
        if hasattr(part.attention, "num_key_value_groups"):
            part.attention.num_key_value_groups = group
    left = heads - len(removed[0])
    if own_head_format(model.config):
        model.config.num_attention_heads = left
        model.config.num_key_value_heads = left // group
        model.config.head_dim = size
    else:  # BERT's attention reshapes to (-1 heads, head size): smaller projections are all it needs
        setattr(model.config, HEADS_KEY, left)


def prune_neurons(model: Any, removed: list[list[int]], key: str) -> None:
    """Remove feed-forward neurons `removed[layer]` from every layer; config.intermediate_size shrinks."""
    parts = block_parts(model, key)
    width = ffn_width(model)
    for part, gone in zip(parts, removed):
        keep = _kept(width, gone, 1)
        for owner, name in part.ffn_in:
            setattr(owner, name, _sliced(getattr(owner, name), keep, 0))
        owner, name = part.ffn_out
        setattr(owner, name, _sliced(getattr(owner, name), keep, 1))
    model.config.intermediate_size = width - len(removed[0])


def removed_parameters(model: Any, heads: int, groups: int, neurons: int, key: str) -> int:
    """Parameters that removing `heads` query heads (`groups` key/value groups) and `neurons` feed-forward neurons
    from every layer takes away, from the layer shapes (nothing is pruned)."""
    if not heads and not neurons:
        return 0
    parts = block_parts(model, key)
    _, _, size = head_layout(model)

    def rows(linear: Any, n: int) -> int:
        return n * (linear.in_features + (linear.bias is not None))

    total = 0
    for part in parts:
        total += rows(getattr(part.attention, part.q), heads * size)
        total += sum(rows(getattr(part.attention, name), groups * size) for name in (part.k, part.v))
        total += heads * size * getattr(part.output_owner, part.o).out_features
        total += sum(rows(getattr(owner, name), neurons) for owner, name in part.ffn_in)
        total += neurons * getattr(*part.ffn_out).out_features
    return total


def magnitude_prune(model: Any, fraction: float) -> int:
    """Zero the `fraction` of smallest-magnitude weights of each Linear inside the transformer blocks; return the
    number of weights zeroed. The tensors keep their shapes: no time or memory is saved without sparse kernels."""
    import torch

    zeroed = 0
    with torch.no_grad():
        for module in transformer_blocks(model).modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                count = int(weight.numel() * fraction)
                if count:
                    threshold = weight.abs().flatten().kthvalue(count).values
                    mask = weight.abs() <= threshold
                    weight.masked_fill_(mask, 0.0)
                    zeroed += int(mask.sum())
    return zeroed


# ---------------------------------------------------------------- quantization


def import_torchao(key: str) -> Any:
    """torchao, imported without its CPU-machine chatter (llmkit.models.quiet); a UserError naming the extra when
    it is not installed."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        raise UserError(f"{key}: quantization uses torchao, which is not installed; install it with {INSTALL}.")
    silence_torchao_import()
    import torchao
    import torchao.quantization  # noqa: F401  (loads the kernels)

    return torchao


def torchao_config(method: str, key: str) -> Any:
    """transformers' TorchAoConfig for one of CPU_METHODS."""
    import_torchao(key)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    configs = {"int8-dynamic": Int8DynamicActivationInt8WeightConfig, "int8-weight-only": Int8WeightOnlyConfig}
    return TorchAoConfig(configs[method]())


def is_quantized(model_or_config: Any) -> str | None:
    """The quantization method a model (or its config) carries, or None."""
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "llmkit_dynamic_int8", None):
        return "PyTorch dynamic int8"
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        return None
    method = getattr(quantization, "quant_method", None) or (quantization.get("quant_method")
                                                              if isinstance(quantization, dict) else None)
    return str(getattr(method, "value", method) or "quantized")
