"""Load tokenizers and models from a `ModelConfig` / `TokenizerConfig`; build from_config models; freezing."""

from __future__ import annotations

import weakref
from typing import Any

from llmkit.errors import UserError, first_line
from llmkit.models import low_rank
from llmkit.models.adapters import auto_class_for, find_adapter_dir, load_adapter_model, read_metadata
from llmkit.models.integrity import (
    check_model_dir,
    check_tokenizer_path,
    explain_load_error,
    is_local,
    load_errors,
    tokenizer_dir_problem,
)
from llmkit.models.quiet import quiet_transformers
from llmkit.models.resolve import ModelNotFound, resolve_model_path
from llmkit.models.safety import is_remote_code_refusal, option_key, remote_code_refusal, weights_kwargs

# family -> (config class name, {llmkit size name: that class's argument name})
FAMILIES = {
    "bert": ("BertConfig", {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size",
                            "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
                            "max_position_embeddings": "max_position_embeddings"}),
    "gpt2": ("GPT2Config", {"num_layers": "n_layer", "hidden_size": "n_embd", "num_heads": "n_head",
                            "intermediate_size": "n_inner", "max_position_embeddings": "n_positions"}),
    "llama": ("LlamaConfig", {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size",
                              "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
                              "max_position_embeddings": "max_position_embeddings"}),
}
# The config key each tokenizer from load_tokenizer came from, so the vocabulary check names the right one.
_TOKENIZER_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _resolve(key: str, name: str) -> str:
    try:
        return resolve_model_path(name)
    except ModelNotFound as e:
        raise UserError(f"{key}: {e}") from None


def source_key(model_cfg: Any) -> str:
    """The config key that names where a model comes from: model.name_or_path or model.gguf_file, the student's
    distill.student.name_or_path, or distill.teacher (whose other options are distill.teacher_*)."""
    prefix = getattr(model_cfg, "option_prefix", "model.")
    if prefix.endswith("_"):
        return prefix[:-1]
    return prefix + ("gguf_file" if getattr(model_cfg, "gguf_file", None) else "name_or_path")


def model_source(model_cfg: Any) -> str:
    """The path (or hub id) to load the model from: the converted directory for `model.gguf_file` (converted
    on first use), else the resolved `model.name_or_path`. A local folder transformers cannot load (a file, no
    config.json, a broken config.json) is refused here, naming the key."""
    if getattr(model_cfg, "gguf_file", None):
        from llmkit.models.gguf import convert_gguf, gguf_path

        try:
            source = gguf_path(model_cfg)
        except ModelNotFound as e:
            raise UserError(f"model.name_or_path: {e}") from None
        return str(convert_gguf(source))
    key = source_key(model_cfg)
    path = _resolve(key, model_cfg.name_or_path)
    adapter_dir = find_adapter_dir(path)
    if adapter_dir:
        return str(adapter_dir)  # an adapter run: its adapter/ folder holds the tokenizer
    check_model_dir(key, path)
    return path


def model_label(model_cfg: Any) -> str:
    """How a model is named in messages and reports: its reference, GGUF file, or from_config family."""
    gguf_file = getattr(model_cfg, "gguf_file", None)
    if gguf_file:
        return f"{model_cfg.name_or_path}/{gguf_file}" if model_cfg.name_or_path else gguf_file
    if model_cfg.name_or_path:
        return model_cfg.name_or_path
    return f"from_config ({model_cfg.from_config.family})" if model_cfg.from_config else "model"


def load_tokenizer(model_cfg: Any, tok_cfg: Any):
    """The tokenizer from `tokenizer.name_or_path`, else from the model; pad token set if missing."""
    from transformers import AutoTokenizer

    name = tok_cfg.name_or_path or model_label(model_cfg)
    key = "tokenizer.name_or_path" if tok_cfg.name_or_path else source_key(model_cfg)
    if not name:
        raise UserError("tokenizer.name_or_path: model.from_config builds a new model, which has no tokenizer; set "
                        "tokenizer.name_or_path to a tokenizer directory or hub id.")
    if tok_cfg.name_or_path:
        path = _resolve(key, tok_cfg.name_or_path)
        check_tokenizer_path(key, path)
    else:
        path = model_source(model_cfg)
    problem = tokenizer_dir_problem(key, path)
    if problem:
        raise UserError(f"{key}: {problem}")
    kwargs = {"revision": model_cfg.revision, "trust_remote_code": model_cfg.trust_remote_code}
    if tok_cfg.padding_side:
        kwargs["padding_side"] = tok_cfg.padding_side
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError) as e:  # TypeError: a tokenizer_config.json of the wrong shape
        hint = "" if is_local(path) else (" If this is a hub id and you are offline, download it first or point to "
                                          "a local directory.")
        raise UserError(f"{key}: cannot load a tokenizer from {name!r}: {first_line(e)}{hint}") from None
    _TOKENIZER_KEYS[tokenizer] = key
    template = tok_cfg.chat_template_text() if hasattr(tok_cfg, "chat_template_text") else None
    if template:
        tokenizer.chat_template = template  # saved with the model, so generation uses the training template
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder tokenizers often have none; batching needs one
    return tokenizer


def build_model_config(spec: Any, tokenizer: Any, **task_kwargs: Any):
    """A transformers config for `model.from_config` (family + sizes + extra fields)."""
    import transformers

    class_name, names = FAMILIES[spec.family]
    config_cls = getattr(transformers, class_name)
    kwargs = {names[k]: getattr(spec, k) for k in names if getattr(spec, k) is not None}
    # The documented default; BertConfig (3072) and LlamaConfig (11008) would otherwise keep their base sizes.
    kwargs[names["intermediate_size"]] = spec.intermediate_size or 4 * spec.hidden_size
    kwargs["vocab_size"] = spec.vocab_size or len(tokenizer)
    if spec.vocab_size and spec.vocab_size < len(tokenizer):
        raise UserError(f"model.from_config.vocab_size: {spec.vocab_size} is smaller than the tokenizer's "
                        f"{len(tokenizer)} tokens; raise it or leave it unset.")
    if spec.family == "gpt2":
        # GPT-2's tanh-approximated GELU as one kernel: GPT2Config's default, gelu_new, composes it of eight
        # elementwise ops (forward and backward). With the fused loss, 9,542-9,559 instead of 7,953-7,981 tokens/s
        # training the pretraining benchmark's model in bf16 (scripts/bench/lm_head_levers.py);
        # tests/models/test_from_config.py checks that the function is the same.
        kwargs["activation_function"] = "gelu_pytorch_tanh"
    for special in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, special, None)
        if value is not None:
            kwargs[special] = value
    default = config_cls()
    unknown = [k for k in spec.extra if not hasattr(default, k)]
    if unknown:
        raise UserError(f"model.from_config.extra: {', '.join(unknown)} not found among the fields of "
                        f"{class_name}; check the spelling against the transformers docs for {class_name}.")
    return config_cls(**{**kwargs, **spec.extra, **task_kwargs})


def load_model(auto_class_name: str, model_cfg: Any, tokenizer: Any, **task_kwargs: Any):
    """Load (or build from config) a model with the given Auto class and task settings (num_labels, ...); the
    tokenizer's vocabulary must fit its embedding table."""
    import transformers

    auto_cls = getattr(transformers, auto_class_name)
    allow_pickle, allow_key = getattr(model_cfg, "allow_pickle", False), option_key(model_cfg, "allow_pickle")
    check_attn_implementation(model_cfg)
    adapter_dir = find_adapter_dir(model_cfg.name_or_path and model_source(model_cfg))
    if adapter_dir is not None:  # an adapter run or folder: its base model with the adapter applied
        model = load_adapter_model(adapter_dir, auto_class_name, allow_pickle=allow_pickle, allow_key=allow_key,
                                   trust_remote_code=model_cfg.trust_remote_code)
        check_vocabulary_fits(model, tokenizer)
        return model, set()
    common = {}
    if model_cfg.attn_implementation:
        common["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.from_config is not None:
        config = build_model_config(model_cfg.from_config, tokenizer, **task_kwargs)
        try:
            model = auto_cls.from_config(config, **common)
        except (ValueError, ImportError) as e:
            raise attention_error(e, model_cfg) or UserError(
                f"{option_key(model_cfg, 'from_config')}: cannot build a {model_cfg.from_config.family} model: "
                f"{first_line(e)}") from None
        check_vocabulary_fits(model, tokenizer, option_key(model_cfg, "from_config.vocab_size"))
        return model, set()
    path = model_source(model_cfg)
    key = source_key(model_cfg)
    label = model_label(model_cfg)
    revision = None if key.endswith("gguf_file") else model_cfg.revision  # the converted directory is local
    common.update(weights_kwargs(key, path, allow_pickle, allow_key))  # safetensors only, unless allowed
    try:
        with quiet_transformers():
            model, info = low_rank.from_pretrained(auto_cls, path, revision=revision, output_loading_info=True,
                                                   trust_remote_code=model_cfg.trust_remote_code, **common,
                                                   **task_kwargs)
    except load_errors() as e:
        raise attention_error(e, model_cfg) or UserError(explain_load_error(e, key, label, path, allow_key)) from None
    missing = set(info.get("missing_keys", ()))
    if missing and not set(model.state_dict()) - missing:  # all random: it would train from scratch, silently
        unexpected = sorted(info.get("unexpected_keys", ()))
        holds = f" (it holds e.g. {unexpected[0]})" if unexpected else ""
        raise UserError(f"{key}: none of the weights of {label!r} fit the {type(model).__name__} its config.json "
                        f"describes{holds}: the config and the weights do not belong together. Download the model "
                        "again (or re-save it with save_pretrained).")
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    check_vocabulary_fits(model, tokenizer)
    return model, missing


def check_vocabulary_fits(model: Any, tokenizer: Any, key: str | None = None) -> None:
    """Refuse a tokenizer with more tokens than the model has embedding rows: its higher token ids would index
    past the table (an IndexError mid-training, "index out of range in self" on CPU). A smaller tokenizer is
    fine (vocabularies are often padded). `key` defaults to the setting the tokenizer was loaded from."""
    rows = embedding_rows(model)
    size = len(tokenizer)
    if rows is None or size <= rows:
        return
    key = key or _TOKENIZER_KEYS.get(tokenizer, "tokenizer.name_or_path")
    if key == "tokenizer.name_or_path":
        fix = ("use the model's own tokenizer (leave tokenizer.name_or_path unset), or a tokenizer with at most "
               f"{rows} tokens (the one the model was trained with).")
    elif key.endswith("from_config.vocab_size"):
        fix = f"set {key} to at least {size}, or leave it unset (the tokenizer's size)."
    else:
        fix = ("the tokenizer saved with the model does not belong to it: re-save the two together (after "
               "model.resize_token_embeddings(len(tokenizer))), or set tokenizer.name_or_path to the model's "
               "original tokenizer.")
    raise UserError(f"{key}: the tokenizer has {size} tokens but the model's embedding table has {rows} rows, so "
                    f"token ids from {rows} on would index past it; {fix}")


def embedding_rows(model: Any) -> int | None:
    """Rows of the model's input embedding table (its vocabulary size), or None if it has none."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    rows = getattr(embeddings, "num_embeddings", None)
    return rows if isinstance(rows, int) else getattr(getattr(model, "config", None), "vocab_size", None)


# ---------------------------------------------------------------- attention implementations


def attention_choices() -> list[str]:
    """The attention implementations that work on this machine (flash attention only with its package)."""
    from transformers.utils import import_utils

    found = ["eager", "sdpa"]
    if import_utils.is_torch_flex_attn_available():
        found.append("flex_attention")
    for version in (2, 3, 4):
        check = getattr(import_utils, f"is_flash_attn_{version}_available", None)
        if check is not None and check():
            found.append(f"flash_attention_{version}")
    return found


def check_attn_implementation(model_cfg: Any) -> None:
    """Refuse an attention implementation transformers does not know (a typo, wrong case), before the model is
    built. Known but unusable ones (flash attention without its package) are refused when transformers tries
    them, by `attention_error`; hub kernels ("org/repo") are transformers' to fetch and check."""
    value = getattr(model_cfg, "attn_implementation", None)
    if not value or "/" in value:
        return
    import transformers
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if value in known or value.removeprefix("paged|") in known:
        return
    key = option_key(model_cfg, "attn_implementation")
    raise UserError(f"{key}: {value!r} is not an attention implementation transformers {transformers.__version__} "
                    f"knows (it knows {', '.join(known)}). Available here: {', '.join(attention_choices())}; set "
                    f"{key} to one of these, or leave it unset for transformers' default (sdpa where the model "
                    "supports it).")


def attention_error(error: BaseException, model_cfg: Any) -> UserError | None:
    """transformers' refusal of the requested attention implementation (flash attention not installed, no GPU,
    a model without support, a hub kernel not at hand offline), as a UserError naming the key; else None."""
    value = getattr(model_cfg, "attn_implementation", None)
    text = str(error).lower()
    if not value or not isinstance(error, (ImportError, ValueError)) or not any(
            word in text for word in ("attention", "attn", "flash", "kernel")):
        return None
    key = option_key(model_cfg, "attn_implementation")
    install = (" Flash attention needs a CUDA GPU and its package (pip install flash-attn for flash_attention_2)."
               if value.startswith("flash_attention") else "")
    return UserError(f"{key}: {value!r} cannot be used here: {first_line(error)}{install} Available here: "
                     f"{', '.join(attention_choices())}; set {key} to one of these, or leave it unset for "
                     "transformers' default.")


def transformer_blocks(model: Any):
    """The ModuleList of transformer blocks (BERT `encoder.layer`, GPT-2 `h`, Llama `layers`)."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    return None


def freeze(model: Any, embeddings: bool, first_layers: int) -> None:
    """Freeze the embedding layer and/or the first N transformer blocks."""
    if embeddings:
        base = model.base_model
        module = getattr(base, "embeddings", None) or model.get_input_embeddings()
        for extra in ("wpe",):  # GPT-2 keeps position embeddings beside the token embeddings
            if hasattr(base, extra):
                getattr(base, extra).requires_grad_(False)
        module.requires_grad_(False)
    if first_layers:
        blocks = transformer_blocks(model)
        if blocks is None:
            raise UserError("model.freeze_layers: cannot find the transformer blocks of this model; leave it at 0.")
        if first_layers > len(blocks):
            raise UserError(f"model.freeze_layers: {first_layers} is more than the model's {len(blocks)} layers; "
                            f"set it to {len(blocks)} or fewer.")
        for block in blocks[:first_layers]:
            block.requires_grad_(False)


def check_sequence_length(model: Any, stats: dict) -> None:
    """Refuse data whose longest tokenized example exceeds the model's position embeddings (an index error
    deep inside the forward pass otherwise)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max((s["max_tokens"] for s in stats.values()), default=0)
    if limit and longest > limit:
        raise UserError(f"data.max_length: the longest example has {longest} tokens but the model has only {limit} "
                        f"positions; set data.max_length={limit} (or lower).")


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


# Model types read as masked LMs when a config names no architecture.
ENCODER_TYPES = ("bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta")


def model_kind(model_cfg: Any) -> str:
    """What the model is for, as a task.type name: sequence-classification, token-classification (its head),
    causal-lm or masked-lm (a language model); from its saved architecture (or adapter run)."""
    from transformers import AutoConfig


    if model_cfg.from_config is not None:
        return "masked-lm" if model_cfg.from_config.family == "bert" else "causal-lm"
    adapter_dir = find_adapter_dir(model_cfg.name_or_path)
    if adapter_dir is not None:
        task = read_metadata(adapter_dir)["task"]
        return "causal-lm" if task == "preference" else task  # a preference-tuned adapter adapts a causal LM
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(model_source(model_cfg), trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        if is_remote_code_refusal(e):
            trust_key = option_key(model_cfg, "trust_remote_code")
            raise UserError(f"model.name_or_path: {remote_code_refusal(model_label(model_cfg), trust_key)}") from None
        raise UserError(f"model.name_or_path: cannot read the model config of {model_label(model_cfg)!r}: "
                        f"{e}".splitlines()[0]) from None
    kinds = {"AutoModelForSequenceClassification": "sequence-classification",
             "AutoModelForTokenClassification": "token-classification", "AutoModelForMaskedLM": "masked-lm",
             "AutoModelForCausalLM": "causal-lm"}
    kind = kinds.get(auto_class_for(config.architectures or []))
    return kind or ("masked-lm" if config.model_type in ENCODER_TYPES else "causal-lm")


def sentence_model_for(model_cfg: Any, source: str, pooling: str | None, max_length: int | None) -> Any:
    """build_sentence_model for a model section (finetune's sentence-embedding, pretrain's contrastive), with what
    load_model gives every other from_pretrained: safetensors only unless allow_pickle (a folder holding only
    pickle weights is refused), its revision and attn_implementation; a failed load is a UserError naming the key."""
    from llmkit.models.embedding import build_sentence_model

    check_attn_implementation(model_cfg)
    key, allow_key = source_key(model_cfg), option_key(model_cfg, "allow_pickle")
    kwargs = weights_kwargs(key, source, model_cfg.allow_pickle, allow_key)
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    revision = None if key.endswith("gguf_file") else model_cfg.revision  # the converted GGUF directory is local
    try:
        return build_sentence_model(source, pooling, max_length, model_cfg.trust_remote_code, kwargs, revision)
    except load_errors() as e:
        raise attention_error(e, model_cfg) or UserError(
            explain_load_error(e, key, model_label(model_cfg), source, allow_key)) from None
