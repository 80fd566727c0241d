"""Tiny copies of real models for smoke runs: the real model's own config (family, architecture and task head,
vocabulary, special tokens, positions) with 2 layers and a small width, randomly initialised, saved beside the
real tokenizer.

No weight of the real model is read: the config comes from its config.json (or from a GGUF file's metadata, or
llmkit's converted copy of it), and the model is built from that config with random weights. The result is a
plain transformers directory, cached under `$LLMKIT_CACHE/smoke-models/<key>` (the key covers the source, its
config and tokenizer files, and the sizes), so every later smoke run of the same model loads it in well under
a second. No heavy imports at module level.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmkit.data.cache import cache_error, publishing
from llmkit.data.cache import cache_root as data_cache_root
from llmkit.errors import UserError, first_line
from llmkit.models.gguf import _no_progress_bars, gguf_cache_dir, is_converted
from llmkit.models.integrity import check_model_dir
from llmkit.models.quiet import quiet_transformers
from llmkit.models.student import LAYER_INDEX_LISTS, PER_LAYER_LISTS
from llmkit.version import __version__

MARKER = "llmkit-tiny.json"  # written last: a directory without it is an interrupted build
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
INTERMEDIATE_NAMES = ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", "d_ff", "ffn_hidden_size",
                      "moe_intermediate_size", "shared_expert_intermediate_size")
EXPERT_NAMES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
FROM_CONFIG_FIX = ("To smoke-test without it, build the model from a config instead: model.from_config: {family: "
                   "bert | gpt2 | llama} with tokenizer.name_or_path set to a local tokenizer directory.")


@dataclass(frozen=True)
class TinySizes:
    """How small a tiny model is: its depth, width, attention heads and feed-forward width."""

    layers: int = 2
    hidden: int = 64
    heads: int = 4
    intermediate: int = 128


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of `n` that is at most `at_most` (at least 1)."""
    return next(d for d in range(max(min(at_most, n), 1), 0, -1) if n % d == 0)


def shrink_config(config: Any, sizes: TinySizes = TinySizes()) -> Any:
    """A copy of a transformers config with the tiny sizes: `sizes.layers` layers (per-layer lists cut to them),
    hidden width, a head count that divides it (and key/value heads that divide that, keeping grouped-query
    attention grouped), head_dim to match, a small feed-forward width and at most 4 experts. Vocabulary, special
    token ids, positions, model_type, architectures, labels and everything else are kept."""
    config = copy.deepcopy(config)
    old_layers = getattr(config, "num_hidden_layers", None)
    old_hidden = getattr(config, "hidden_size", None)
    old_heads = getattr(config, "num_attention_heads", None)
    if not all(isinstance(v, int) for v in (old_layers, old_hidden, old_heads)):
        raise ValueError(f"{type(config).__name__} has no num_hidden_layers / hidden_size / num_attention_heads")
    layers = min(old_layers, sizes.layers)
    hidden = min(old_hidden, sizes.hidden)
    heads = largest_divisor(hidden, min(old_heads, sizes.heads))
    config.num_hidden_layers = layers
    config.hidden_size = hidden
    config.num_attention_heads = heads
    kv = getattr(config, "num_key_value_heads", None)
    if isinstance(kv, int) and kv > 0:
        group = max(old_heads // kv, 1)  # query heads per key/value head in the real model
        config.num_key_value_heads = largest_divisor(heads, max(heads // group, 1))
    if isinstance(getattr(config, "head_dim", None), int):
        config.head_dim = hidden // heads
    if isinstance(getattr(config, "embedding_size", None), int):  # ALBERT, ELECTRA: factorised embeddings
        config.embedding_size = min(config.embedding_size, hidden)
    for name in INTERMEDIATE_NAMES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > sizes.intermediate:
            setattr(config, name, sizes.intermediate)
    for name in EXPERT_NAMES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 4:
            setattr(config, name, 4)
    experts = next((getattr(config, n) for n in EXPERT_NAMES if isinstance(getattr(config, n, None), int)), None)
    if experts and isinstance(getattr(config, "num_experts_per_tok", None), int):
        config.num_experts_per_tok = min(config.num_experts_per_tok, experts)
    keep = list(range(layers))
    for name, value in config.to_dict().items():  # per-layer settings (layer_types, ...) follow the first layers
        if not isinstance(value, (list, tuple)) or name.startswith("mtp_"):
            continue
        if (name in PER_LAYER_LISTS or name.endswith(("layer_types", "_per_layer"))) and len(value) == old_layers:
            setattr(config, name, type(value)(value[:layers]))
        elif name in LAYER_INDEX_LISTS:
            setattr(config, name, type(value)(j for j in value if j in keep))
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF model's: the tiny model is plain float weights
    return config


def is_tiny_dir(path: str | Path | None) -> bool:
    """A directory `tiny_model_dir` built (already tiny: smoke runs use it as it is)."""
    return bool(path) and (Path(path).expanduser() / MARKER).is_file()


def tiny_info(path: str | Path) -> dict:
    return json.loads((Path(path).expanduser() / MARKER).read_text())


@dataclass
class ModelSource:
    """Where a real model's config and tokenizer are read from, and how messages name it."""

    path: str  # a local directory or a hub id (read from the HF cache offline)
    label: str  # as the config names it: pkg:..., a path, a hub id, or name_or_path/file.gguf
    key: str = "model.name_or_path"  # the config key named in errors
    gguf_file: str | None = None  # a file name inside `path`
    revision: str | None = None
    trust_remote_code: bool = False


def cache_root(cache_dir: str | None = None) -> Path:
    """$LLMKIT_CACHE/smoke-models (the data cache's parent, as for teacher outputs)."""
    return data_cache_root(cache_dir).parent / "smoke-models"


def tiny_model_dir(source: ModelSource, sizes: TinySizes = TinySizes(), cache_dir: str | None = None) -> Path:
    """The cached tiny copy of `source` (built on first use): a model directory with the tiny model, the real
    tokenizer and `llmkit-tiny.json` describing both.

    Raises:
        UserError: the real model's config is not available here (offline, not cached), or its architecture
            cannot be built from a config; the message names the key and how to smoke-test without it.
    """
    key = _cache_key(source, sizes)
    target = cache_root(cache_dir) / key
    if is_tiny_dir(target):
        return target
    config, tokenizer, generation = _read_source(source)
    model = _build(source, config, sizes)
    try:
        with publishing(target, is_tiny_dir) as tmp:
            _save(model, tokenizer, generation, tmp)
            info = {"source": source.label, "architecture": type(model).__name__, "sizes": asdict(sizes),
                    "layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size,
                    "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": model.config.vocab_size,
                    "tokenizer": tokenizer is not None}
            (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    except OSError as e:  # everything in the block writes under the cache
        raise cache_error(e, target, cache_dir) from None
    return target


def _cache_key(source: ModelSource, sizes: TinySizes) -> str:
    """Source identity without reading weights: for local directories, config and tokenizer files by name, size
    and modification time; for a GGUF file, the file's; for a hub id, the id and revision."""
    stamp: list = []
    path = Path(source.path).expanduser()
    if source.gguf_file:
        f = (path / source.gguf_file).resolve()
        st = f.stat()
        stamp = [str(f), st.st_size, st.st_mtime_ns]
    elif path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
                st = f.stat()
                stamp.append([f.name, st.st_size, st.st_mtime_ns])
        stamp.insert(0, str(path.resolve()))
    else:
        stamp = [source.path, source.revision]
    payload = json.dumps({"llmkit": __version__, "transformers": _transformers_version(), "source": stamp,
                          "sizes": asdict(sizes)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _transformers_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("transformers")


def _read_source(source: ModelSource) -> tuple[Any, Any, Any]:
    """(config, tokenizer or None, generation config or None) of the real model, weights untouched."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig


    path, kwargs = source.path, {"revision": source.revision, "trust_remote_code": source.trust_remote_code}
    if source.gguf_file:
        converted = _converted_gguf(source)
        if converted is not None:  # llmkit converted this file before: its config.json and tokenizer are at hand
            path, kwargs = str(converted), {}
        else:
            from llmkit.models.gguf import require_gguf_package

            require_gguf_package()
            kwargs = {"gguf_file": source.gguf_file}
    else:
        check_model_dir(source.key, path)  # a local folder without config.json: say so, not "offline"
    try:
        with quiet_transformers(), _gguf_metadata_read_once():
            config = AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{source.key}: smoke mode builds a tiny model from the real model's config, but the config "
                        f"of {source.label!r} is not available here: {first_line(e)} Offline, a hub model is read "
                        f"from the Hugging Face cache: download it once where the hub is reachable. "
                        f"{FROM_CONFIG_FIX}") from None
    try:
        with quiet_transformers(), _gguf_metadata_read_once():
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        tokenizer = None  # e.g. a model folder without tokenizer files; the recipe reports it as the real run would
    generation = None
    if not source.gguf_file or path != source.path:
        try:
            generation = GenerationConfig.from_pretrained(path, **kwargs)
        except (OSError, ValueError):
            pass
    return config, tokenizer, generation


_GGUF_METADATA: dict = {}


@contextlib.contextmanager
def _gguf_metadata_read_once():
    """transformers parses a GGUF file's metadata (about 3.5 s for SmolLM2) once for the config and again for the
    tokenizer's config: keep the first parse for the second."""
    try:
        import transformers.modeling_gguf_pytorch_utils as reader
    except ImportError:
        yield
        return
    original = reader.load_gguf_checkpoint

    def read_once(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs:
            return original(path, return_tensors=return_tensors, **kwargs)
        if path not in _GGUF_METADATA:
            _GGUF_METADATA.clear()
            _GGUF_METADATA[path] = original(path, return_tensors=False)
        return copy.deepcopy(_GGUF_METADATA[path])

    reader.load_gguf_checkpoint = read_once
    try:
        yield
    finally:
        reader.load_gguf_checkpoint = original


def _converted_gguf(source: ModelSource) -> Path | None:
    target = gguf_cache_dir(Path(source.path).expanduser() / source.gguf_file)
    return target if is_converted(target) else None


def architecture_class(config: Any, gguf: bool = False):
    """The class the real checkpoint was saved as (config.architectures[0]), so the tiny checkpoint has the same
    heads; a GGUF file's config names none: transformers loads those as causal LMs."""
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    if not names and gguf:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        names = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, "")]
    if not names:
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        names = [MODEL_MAPPING_NAMES.get(config.model_type, "")]
    cls = getattr(transformers, names[0], None) if names[0] else None
    return cls, names[0]


def _build(source: ModelSource, config: Any, sizes: TinySizes):
    import torch


    cls, name = architecture_class(config, gguf=bool(source.gguf_file))
    if cls is None:
        raise UserError(f"{source.key}: smoke mode cannot build a tiny copy of {source.label!r}: its architecture "
                        f"{name or config.model_type!r} is not a transformers class (custom code?). {FROM_CONFIG_FIX}")
    try:
        tiny = shrink_config(config, sizes)
        tiny.architectures = [cls.__name__]
        torch.manual_seed(0)  # the same tiny model on every machine
        with quiet_transformers():
            model = cls(tiny)
    except Exception as e:  # any transformers config the shrinking does not fit
        raise UserError(f"{source.key}: smoke mode cannot build a tiny {cls.__name__} from the config of "
                        f"{source.label!r}: {first_line(e)} {FROM_CONFIG_FIX}") from None
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype != torch.float32:
        model = model.to(dtype)  # loads as the real checkpoint does (dtype="auto")
    return model


def _save(model: Any, tokenizer: Any, generation: Any, directory: Path) -> None:
    if generation is not None and model.can_generate():
        model.generation_config = generation
    with quiet_transformers(), _no_progress_bars():
        model.save_pretrained(str(directory))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
