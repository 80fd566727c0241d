"""A DistilBERT-style student: a copy of the teacher that keeps a subset of its transformer blocks.

Student block i starts as teacher block keep[i]; embeddings, final norm, pooler and task heads are copied as they
are. The student is built from the teacher's own config (fewer layers) and loaded from a renamed copy of the
teacher's state dict, so it is a plain model of the teacher's class that saves and loads like any other.
"""

from __future__ import annotations

import copy
from typing import Any

from llmkit.errors import UserError
from llmkit.models.loading import transformer_blocks

KEY = "distill.student.from_teacher"

# Config lists with one entry per layer (besides names ending in `layer_types` / `_per_layer`): cut to the kept layers.
PER_LAYER_LISTS = {"no_rope_layers", "layer_rope_theta", "layers_block_type"}
# Config lists of layer indices: renumbered to the student's positions, indices of dropped layers removed.
LAYER_INDEX_LISTS = {"mlp_only_layers", "moe_layers", "cross_attention_layers"}


def _layer_range(num_layers: int) -> str:
    return f"the teacher has {num_layers} layer{'s' if num_layers != 1 else ''} (0-{num_layers - 1})"


def _is_whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def select_layers(num_layers: int, keep_layers: list[int] | None, every: int | None,
                  key: str = KEY) -> list[int]:
    """The teacher layer indices (0-based, increasing) the student keeps.

    Args:
        num_layers: The teacher's number of transformer blocks.
        keep_layers: Explicit indices, strictly increasing, each in [0, num_layers). Keeping all is allowed (a copy).
        every: Keep every k-th layer: k >= 1 gives [0, k, 2k, ...] below num_layers.
        key: The config key named in error messages.

    Raises:
        UserError: both or neither of keep_layers / every given, or a bad value (naming the key and the fix).
    """
    span = _layer_range(num_layers)
    if keep_layers is not None and every is not None:
        raise UserError(f"{key}.keep_layers and {key}.every are both set; set only one of them ({span}).")
    if keep_layers is None and every is None:
        raise UserError(f"{key}: set {key}.keep_layers (teacher layer indices, e.g. [0, 2, 4]) or {key}.every "
                        f"(keep every k-th layer, e.g. 2); {span}.")
    if every is not None:
        if not _is_whole_number(every) or every < 1:
            raise UserError(f"{key}.every: {every!r} must be a whole number of at least 1 (1 keeps all layers, "
                            f"2 keeps layers 0, 2, 4, ...); {span}.")
        return list(range(0, num_layers, every))
    keep = list(keep_layers)
    if not keep:
        raise UserError(f"{key}.keep_layers is empty; list the teacher layers to keep, e.g. [0, 2, 4] ({span}).")
    bad = [i for i in keep if not _is_whole_number(i) or not 0 <= i < num_layers]
    if bad:
        shown = ", ".join(repr(i) for i in bad)
        raise UserError(f"{key}.keep_layers: {shown} out of range in {keep}; {span}, so use indices "
                        f"0-{num_layers - 1}.")
    if any(b <= a for a, b in zip(keep, keep[1:])):
        raise UserError(f"{key}.keep_layers: {keep} must be strictly increasing without repeats (student layer i "
                        f"starts as teacher layer keep_layers[i]); e.g. {sorted(set(keep))}. {span.capitalize()}.")
    return keep


def _check_teacher(teacher: Any):
    """The teacher's block ModuleList and its dotted name; UserError for teachers whose blocks cannot be copied."""
    if getattr(teacher, "peft_config", None) or getattr(teacher, "_hf_peft_config_loaded", False):
        raise UserError(f"{KEY}: the teacher carries a PEFT adapter, whose layers cannot be copied into a plain "
                        "student; merge the adapter first (llmkit adapter merge RUN --output DIR) and use the merged "
                        "model as the teacher, or give distill.student.name_or_path instead.")
    if getattr(teacher, "hf_quantizer", None) is not None:
        raise UserError(f"{KEY}: the teacher is quantized, and quantized weights cannot be copied into a trainable "
                        "student; load the teacher unquantized or give distill.student.name_or_path instead.")
    blocks = transformer_blocks(teacher)
    name = next((n for n, m in teacher.named_modules() if m is blocks), None) if blocks is not None else None
    if not name:
        raise UserError(f"{KEY}: cannot find the transformer blocks of {type(teacher).__name__}; merge any adapter "
                        "into the teacher first, or give distill.student.name_or_path instead.")
    if getattr(teacher.config, "is_heterogeneous", False):
        raise UserError(f"{KEY}: the teacher's config sets per-layer overrides (per_layer_config), which llmkit does "
                        "not renumber; give distill.student.name_or_path instead.")
    return blocks, name


def student_config(teacher_config: Any, keep: list[int]):
    """A deep copy of the teacher's config with len(keep) layers; per-layer lists (`layer_types`, ...) are cut
    to the kept layers and layer-index lists renumbered, so student layer i is configured like teacher layer keep[i]."""
    num_layers = teacher_config.num_hidden_layers
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(keep)  # GPT-2 maps this to n_layer through its attribute_map
    for name, value in teacher_config.to_dict().items():
        if not isinstance(value, (list, tuple)) or name.startswith("mtp_"):  # multi-token-prediction layers: own count
            continue
        per_layer = name in PER_LAYER_LISTS or name.endswith(("layer_types", "_per_layer"))
        if per_layer and len(value) == num_layers:
            new = [value[j] for j in keep]
        elif name in LAYER_INDEX_LISTS:
            new = [keep.index(j) for j in value if j in keep]
        else:
            continue
        try:
            setattr(config, name, type(value)(new))
        except AttributeError:  # a read-only property derived from other fields
            raise UserError(f"{KEY}: the teacher's config derives {name!r} from other fields, so llmkit cannot cut it "
                            "to the kept layers; give distill.student.name_or_path instead.") from None
    return config


def _student_state_dict(teacher: Any, prefix: str, keep: list[int]) -> dict:
    """The teacher's state dict with block keep[i] renamed to block i and the other blocks dropped."""
    renamed = {f"{prefix}.{j}.": f"{prefix}.{i}." for i, j in enumerate(keep)}
    state = {}
    for key, tensor in teacher.state_dict().items():
        if not key.startswith(prefix + "."):
            state[key] = tensor
            continue
        index = key[len(prefix) + 1:].split(".", 1)[0]
        new_prefix = renamed.get(f"{prefix}.{index}.")
        if new_prefix is not None:
            state[new_prefix + key[len(prefix) + len(index) + 2:]] = tensor
    return state


def student_from_teacher(teacher: Any, keep: list[int]):
    """A new model of the teacher's class with len(keep) transformer blocks, block i a copy of teacher block keep[i].

    Everything outside the blocks (embeddings, position embeddings, final norm, pooler, task heads) is copied too.
    The teacher is not modified and shares no storage with the student: the weights are copied into the student's
    own tensors, and weights tied in the teacher's config (e.g. GPT-2 lm_head and wte) are tied within the student.
    The student has the teacher's dtype, attention implementation, generation config and device; it is in eval
    mode, as `from_pretrained` returns models (Trainer switches to train mode), with every parameter trainable.

    Args:
        teacher: A transformers model (not a PEFT model, not quantized).
        keep: Teacher block indices, strictly increasing (see `select_layers`).

    Raises:
        UserError: a teacher whose blocks cannot be found or copied, or a bad `keep`.
    """
    blocks, prefix = _check_teacher(teacher)
    keep = select_layers(len(blocks), keep, None, key=KEY)
    config = student_config(teacher.config, keep)
    student = type(teacher)._from_config(config, dtype=teacher.dtype,
                                         attn_implementation=teacher.config._attn_implementation)
    state = _student_state_dict(teacher, prefix, keep)
    for target, source in getattr(student, "all_tied_weights_keys", {}).items():
        if target not in state and source in state:  # a tied copy some models leave out of their state dict
            state[target] = state[source]
    student.load_state_dict(state, strict=True)  # copies into the student's own tensors; ties stay intact
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.to(teacher.device).eval()
