"""Sentence-embedding models in the sentence-transformers format (modules.json: the transformer, its pooling).

A sentence-embedding run saves its model with sentence-transformers' own `save`, so
`sentence_transformers.SentenceTransformer(RUN/model)` loads it with the pooling it was trained with; llmkit's
eval reads every model the same way (`load_sentence_model`), so both give the same embeddings. A plain
transformers directory (no modules.json) is read with the pooling asked for (mean by default), as
sentence-transformers itself does. The library is an optional extra (`pip install "llmkit[embeddings]"`), imported
here when a function needs it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from llmkit.errors import UserError

POOLING_MODES = ("mean", "cls", "last-token")
ST_POOLING = {"mean": "mean", "cls": "cls", "last-token": "lasttoken"}  # llmkit's names -> sentence-transformers'
MODULES_FILE = "modules.json"


def require_sentence_transformers(key: str) -> None:
    """A clear error when the optional package is missing (checked before any work)."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise UserError(f"{key}: sentence embeddings need the sentence-transformers package, which is not "
                        "installed. Install it with: pip install \"llmkit[embeddings]\" (or pip install "
                        "sentence-transformers).")


def is_sentence_model(path: str | Path) -> bool:
    """A directory saved in the sentence-transformers format."""
    return (Path(path) / MODULES_FILE).is_file()


def local_sentence_dir(reference: str) -> str | None:
    """Where a model reference is in the sentence-transformers format on this machine: the directory itself, or
    for a hub id its snapshot in the local Hugging Face cache (so its own pooling is used, not mean pooling over
    its encoder); None otherwise. Nothing is downloaded."""
    if is_sentence_model(reference):
        return str(reference)
    if Path(reference).expanduser().exists() or reference.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(reference, MODULES_FILE)
    except (ValueError, OSError):  # not a valid repository id
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def pooling_of(path: str | Path) -> str | None:
    """The pooling a sentence-transformers directory was saved with, in llmkit's names (None: not that format)."""
    path = Path(path)
    if not is_sentence_model(path):
        return None
    for module in json.loads((path / MODULES_FILE).read_text()):
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((path / module["path"] / "config.json").read_text())
            mode = config.get("pooling_mode")
            if isinstance(mode, list):
                mode = mode[0] if mode else None
            if mode is None:  # older format: one boolean per mode
                mode = next((m for m in ("cls_token", "mean_tokens", "lasttoken")
                             if config.get(f"pooling_mode_{m}")), "mean_tokens")
            return {"cls_token": "cls", "mean_tokens": "mean", "cls": "cls", "mean": "mean",
                    "lasttoken": "last-token"}.get(mode, mode)
    return None


def build_sentence_model(model_path: str, pooling: str | None = None, max_length: int | None = None,
                         trust_remote_code: bool = False, model_kwargs: dict | None = None,
                         revision: str | None = None) -> Any:
    """A SentenceTransformer over a transformers model directory: its encoder, then `pooling` (default mean). A
    directory in the sentence-transformers format keeps its own modules and pooling unless `pooling` names
    another one (see with_pooling). `model_kwargs` go to the encoder's from_pretrained (e.g. use_safetensors,
    attn_implementation); `revision` to every file it reads (config, weights, tokenizer). A tokenizer without a
    padding token pads with its end-of-sequence token (decoders), as llmkit's own tokenizer loading does.
    Training callers use loading.sentence_model_for, which adds a model section's safety and loading options."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from llmkit.models.quiet import quiet_transformers

    hub = {"revision": revision} if revision else {}
    with quiet_transformers(), _quiet_progress():
        if is_sentence_model(model_path):
            model = SentenceTransformer(model_path, device="cpu", trust_remote_code=trust_remote_code,
                                        model_kwargs=dict(model_kwargs or {}), **hub)
            if max_length:
                model.max_seq_length = max_length
            if pooling:
                with_pooling(model, pooling)
            _pad_with_eos(model)
            return model
        encoder = Transformer(model_path, max_seq_length=max_length,
                              model_kwargs={"trust_remote_code": trust_remote_code, **hub, **(model_kwargs or {})},
                              config_kwargs={"trust_remote_code": trust_remote_code, **hub},
                              processor_kwargs={"trust_remote_code": trust_remote_code, **hub})
        width = encoder.get_embedding_dimension() if hasattr(encoder, "get_embedding_dimension") else \
            encoder.get_word_embedding_dimension()
        model = SentenceTransformer(modules=[encoder, Pooling(width, ST_POOLING[pooling or "mean"])], device="cpu")
        _pad_with_eos(model)
        return model


def _pad_with_eos(model: Any) -> None:
    tokenizer = getattr(model[0], "tokenizer", None)
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def is_sentence_run(run_config: dict | None) -> bool:
    """An llmkit run's saved config.yaml (as a mapping) trained sentence embeddings: finetune's task.type
    sentence-embedding or pretrain's objective contrastive."""
    run_config = run_config if isinstance(run_config, dict) else {}
    task = run_config.get("task") if isinstance(run_config.get("task"), dict) else {}
    pretrain = run_config.get("pretrain") if isinstance(run_config.get("pretrain"), dict) else {}
    return task.get("type") == "sentence-embedding" or pretrain.get("objective") == "contrastive"


def pooling_in(model: Any) -> str | None:
    """The pooling a loaded SentenceTransformer applies, in llmkit's names (None: it has no Pooling module)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    for module in model:
        if isinstance(module, Pooling):
            mode = module.pooling_mode
            mode = "+".join(mode) if isinstance(mode, (list, tuple)) else mode
            return {st: ours for ours, st in ST_POOLING.items()}.get(mode, mode)
    return None


def with_pooling(model: Any, pooling: str, key: str = "pooling") -> Any:
    """`model` with its Pooling module replaced by `pooling` (llmkit's names); the modules after it (a Dense
    layer, Normalize) are kept. A model without a Pooling module is refused, naming `key`."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    for name, module in model.named_children():
        if isinstance(module, Pooling):
            if module.pooling_mode != ST_POOLING[pooling]:
                model._modules[name] = Pooling(module.embedding_dimension, ST_POOLING[pooling],
                                               include_prompt=module.include_prompt)
            return model
    raise UserError(f"{key}: {pooling!r} cannot be applied: the model has no pooling module "
                    f"({', '.join(type(m).__name__ for m in model)}); remove {key} to use the model as it is.")


def load_sentence_model(path: str, *, pooling: str | None = None, max_length: int | None = None,
                        trust_remote_code: bool = False, allow_pickle: bool = False, key: str = "model.name_or_path",
                        label: str | None = None, pooling_key: str = "pooling") -> Any:
    """The SentenceTransformer llmkit evaluates (and `llmkit.load_model` returns for a sentence-embedding run), in
    eval mode: a sentence-transformers directory with its own modules, its pooling replaced only when `pooling`
    names another; any other model directory with `pooling` (default mean). Sentences are cut at `max_length`
    tokens or the model's own limit, whichever is lower. Weights load from safetensors only unless
    `allow_pickle`; a model that fails to load is a UserError naming `key`."""
    from llmkit.models.integrity import explain_load_error, load_errors
    from llmkit.models.safety import weights_kwargs

    require_sentence_transformers(key)
    path = local_sentence_dir(path) or path
    allow_key = key.rsplit(".", 1)[0] + ".allow_pickle" if "." in key else "allow_pickle"
    safety = weights_kwargs(key, path, allow_pickle, allow_key)
    try:
        model = build_sentence_model(path, None, None, trust_remote_code, safety)
    except load_errors() as e:
        raise UserError(explain_load_error(e, key, label or path, path, allow_key)) from None
    if pooling:
        with_pooling(model, pooling, pooling_key)
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    limits = [n for n in (max_length, model.max_seq_length, getattr(config, "max_position_embeddings", None))
              if isinstance(n, int) and n > 0]
    if limits:
        model.max_seq_length = min(limits)
    return model.eval()


def save_sentence_model(model: Any, path: Path) -> None:
    """The model in the sentence-transformers format (modules.json, the encoder, 1_Pooling/config.json)."""
    with _quiet_progress():
        model.save(str(path))


def encode(model: Any, texts: list[str], batch_size: int = 32, precision: str = "fp32") -> Any:
    """One embedding per text (float32 numpy array), in order; batches sorted by length by sentence-transformers."""
    import torch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        embeddings = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return embeddings.float().cpu().numpy()


def _quiet_progress():
    """sentence-transformers' loading and saving bars (its own tqdm and transformers') kept off the terminal."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def quiet():
        enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if enabled:
                hf_logging.enable_progress_bar()

    return quiet()
