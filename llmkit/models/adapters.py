"""Adapters on a pretrained model: any PEFT method by name, or llmkit's bottleneck adapters.

An adapter run saves only the adapter (plus the task head) in `adapter/`, with `llmkit_adapter.json` naming
the base model and the task; such a folder (or the run directory around it) is a model reference every
command accepts (`load_model` below), and `merge_adapter` turns a LoRA-family adapter into a standalone model.

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.errors import UserError, first_line
from llmkit.models import low_rank
from llmkit.models.embedding import is_sentence_model, load_sentence_model, save_sentence_model
from llmkit.models.integrity import (
    check_model_dir,
    explain_load_error,
    load_errors,
    pickle_zip_problem,
    safetensors_problem,
    tokenizer_dir_problem,
)
from llmkit.models.quiet import quiet_transformers
from llmkit.models.resolve import ModelNotFound, resolve_model_path
from llmkit.models.safety import ADAPTER_SAFE, hub_pickle_refusal, is_safetensors_missing, weights_kwargs

METADATA = "llmkit_adapter.json"
ADAPTER_DIR = "adapter"
BOTTLENECK = "bottleneck"
BOTTLENECK_OPTIONS = ("placement", "reduction_factor", "activation")
# masked-lm: `llmkit prompt` on a masked LM; PEFT's FEATURE_EXTRACTION wrapper passes the MLM head's logits through
# (with task_type None, soft prompts would be silently skipped). sentence-embedding: the adapter wraps the transformer
# inside the sentence-transformers model, whose token vectors the pooling reads.
TASK_TYPES = {"sequence-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS", "causal-lm": "CAUSAL_LM",
              "masked-lm": "FEATURE_EXTRACTION", "sentence-embedding": "FEATURE_EXTRACTION", "preference": "CAUSAL_LM",
              "reward-model": "SEQ_CLS"}
# PEFT config fields llmkit sets itself (from the task and the model), never from the adapter section.
INTERNAL_OPTIONS = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                    "inference_mode"}
# Checked with forward + backward on BERT, GPT-2 and Llama for all three tasks (peft 0.21): these methods only
# fit the listed tasks (prefix tuning needs a KV cache; virtual tokens shift token-classification outputs).
METHOD_TASKS = {
    "prefix_tuning": ("causal-lm", "masked-lm"), "cpt": ("causal-lm",), "cartridge": ("causal-lm",),
    "adaption_prompt": ("causal-lm",),
    "prompt_tuning": ("sequence-classification", "causal-lm", "masked-lm"),
    "p_tuning": ("sequence-classification", "causal-lm", "masked-lm"),
}
# Methods whose training needs inputs an llmkit task does not provide.
UNSUPPORTED = {
    "multitask_prompt_tuning": "it needs a task id per example",
    "poly": "it needs a task id per example",
    "xlora": "it mixes LoRA adapters trained before; train those with method lora",
}


@functools.cache
def peft_methods() -> dict[str, type]:
    """PEFT method name (lower case, as in `adapter.method`) -> its config class."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {peft_type.value.lower(): cls for peft_type, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def method_names() -> list[str]:
    return sorted([*peft_methods(), BOTTLENECK])


def method_options(method: str) -> dict[str, Any]:
    """The options a PEFT method accepts in the adapter section: its config fields and their type hints."""
    cls = peft_methods()[method]
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an unresolvable annotation: accept any value, PEFT checks it
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)
            if f.init and f.name not in INTERNAL_OPTIONS}


def task_refusal(method: str, task: str) -> str | None:
    """Why `method` cannot train `task` (None when it can)."""
    if method in UNSUPPORTED:
        return f"llmkit does not train {method} adapters: {UNSUPPORTED[method]}."
    if task == "preference" and method == BOTTLENECK:
        return ("bottleneck adapters cannot be switched off to give the reference model that preference tuning "
                "compares with; use a PEFT method such as lora.")
    allowed = METHOD_TASKS.get(method)
    if allowed and task not in allowed:
        fits = [m for m in method_names() if m not in UNSUPPORTED and task in METHOD_TASKS.get(m, (task,))]
        shown = ", ".join(m for m in ("lora", "ia3", "loha", "lokr", "adalora", "vera", BOTTLENECK) if m in fits)
        return (f"{method} does not support task.type {task} (only {', '.join(allowed)}). Methods that fit "
                f"{task} include {shown}.")
    return None


# ---------------------------------------------------------------- attaching


def trainable_head_modules(model: Any, missing_keys: set[str]) -> list[str]:
    """Module names that must train beside the adapter: the newly initialised ones (the task head, and e.g. a
    pooler the checkpoint lacks) — a frozen random layer would cap what the adapter can learn."""
    names = {key.rsplit(".", 1)[0] for key in missing_keys if "." in key}
    modules = dict(model.named_modules())
    return sorted(n for n in names if n in modules and not any(n.startswith(other + ".") for other in names))


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of the linear layers an adapter can target (candidates listed in error messages)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, (torch.nn.Linear, Conv1D)) and name}
    return sorted(names)


def check_target_modules(model: Any, targets: Any) -> None:
    """Refuse target module names that match nothing, listing the model's linear layers."""
    if not isinstance(targets, list):
        return  # None (PEFT's per-architecture default), "all-linear", or a regex string: PEFT resolves those
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise UserError(f"adapter.target_modules: {', '.join(map(repr, unmatched))} match no module of this model. "
                        f"Its linear layers are: {', '.join(linear_module_names(model))} (or use all-linear).")


def attach_adapter(model: Any, spec: Any, task: str, missing_keys: set[str]) -> Any:
    """Wrap `model` with the adapter of `spec` (the config's adapter section); the base is frozen, the adapter
    and the task head train."""
    heads = trainable_head_modules(model, missing_keys)
    if spec.method == BOTTLENECK:
        from llmkit.models.bottleneck import add_bottleneck_adapters

        try:
            return add_bottleneck_adapters(model, spec.bottleneck_settings(), trainable_modules=heads)
        except ValueError as e:
            raise UserError(f"adapter.method: bottleneck adapters cannot be added to {type(model).__name__}: "
                            f"{first_line(e)}") from None
    from peft import get_peft_model

    options = dict(spec.passthrough)
    check_target_modules(model, options.get("target_modules"))
    if heads:
        options["modules_to_save"] = sorted(set(options.get("modules_to_save") or []) | set(heads))
    config = peft_config(spec.method, task, options)
    try:
        with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in v5 (FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, config, adapter_name=spec.name)
    except (ValueError, TypeError, NotImplementedError, AttributeError, RuntimeError) as e:
        key = option_named_in(str(e), spec.passthrough) or "method"
        value = f" ({key}={spec.passthrough[key]!r})" if key in spec.passthrough else ""
        raise UserError(f"adapter.{key}: PEFT cannot apply {spec.method}{value} to {type(model).__name__}: "
                        f"{first_line(e)} Adjust the adapter options (e.g. adapter.target_modules), or choose "
                        "another method.") from None


def option_named_in(message: str, options: dict) -> str | None:
    """The adapter option a PEFT error message is about (PEFT writes `r`, `lora_dropout`, ...), if any."""
    import re

    for key in options:
        pattern = rf"`{re.escape(key)}`" + (rf"|\b{re.escape(key)}\b" if len(key) > 2 else "")
        if re.search(pattern, message):
            return key
    return None


def peft_config(method: str, task: str, options: dict) -> Any:
    """The PEFT config object for `method` on `task`; PEFT's own checks become config errors."""
    try:
        return peft_methods()[method](task_type=TASK_TYPES[task], **options)
    except (ValueError, TypeError) as e:
        key = option_named_in(str(e), options)
        raise UserError(f"adapter{'.' + key if key else ''}: invalid options for {method}: {first_line(e)}") from None


# ---------------------------------------------------------------- saving and loading


def save_adapter(model: Any, tokenizer: Any, directory: Path, metadata: dict) -> None:
    """Write the adapter (+ head), the tokenizer and llmkit_adapter.json into `directory`."""
    from llmkit.models.bottleneck import has_bottleneck, save_bottleneck

    directory.mkdir(parents=True, exist_ok=True)
    if has_bottleneck(model):
        save_bottleneck(model, directory)
    else:
        model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def adapter_metadata(model: Any, spec: Any, task: str, base_reference: str, base_path: str,
                     revision: str | None) -> dict:
    """What loading the adapter needs: the base (as written in the config and as resolved), the model class and
    the task settings (labels) the head was built with."""
    config = model.config if not hasattr(model, "peft_config") else model.get_base_model().config
    task_config = {k: getattr(config, k) for k in ("num_labels", "id2label", "label2id", "problem_type")
                   if task not in ("causal-lm", "masked-lm") and getattr(config, k, None) is not None}
    return {"method": spec.method, "name": spec.name, "task": task,
            "architecture": type(model.get_base_model() if hasattr(model, "peft_config") else model).__name__,
            "base_model": base_reference, "base_model_path": base_path, "revision": revision,
            "task_config": task_config, "pad_token_id": config.pad_token_id}


def find_adapter_dir(reference: str | Path | None) -> Path | None:
    """The adapter folder `reference` points to (an adapter folder or a run directory holding `adapter/`)."""
    if not reference:
        return None
    path = Path(reference).expanduser()
    for candidate in (path, path / ADAPTER_DIR):
        if (candidate / METADATA).is_file():
            return candidate
    return None


def read_metadata(adapter_dir: Path) -> dict:
    return json.loads((adapter_dir / METADATA).read_text())


def base_model_path(meta: dict) -> str:
    """Where the base model is: the path resolved at training time if it still exists, else the reference."""
    if meta.get("base_model_path") and Path(meta["base_model_path"]).exists():
        return meta["base_model_path"]
    try:
        return resolve_model_path(meta["base_model"])
    except ModelNotFound as e:
        raise UserError(f"model.name_or_path: the adapter's base model {meta['base_model']!r} cannot be found: "
                        f"{e}") from None


def load_adapter_model(adapter_dir: Path, auto_class_name: str | None = None, adapter_name: str | None = None,
                       allow_pickle: bool = False, allow_key: str = "model.allow_pickle", **load_kwargs: Any) -> Any:
    """The base model with the saved adapter applied (eval mode, adapter active); base and adapter weights load
    from safetensors only unless `allow_pickle`."""
    import transformers

    meta = read_metadata(adapter_dir)
    if meta["task"] == "sentence-embedding":
        return load_sentence_adapter(adapter_dir, allow_pickle=allow_pickle, allow_key=allow_key)
    auto_cls = getattr(transformers, auto_class_name or AUTO_CLASSES[meta["task"]])
    path = base_model_path(meta)
    task_config = dict(meta["task_config"])
    if "id2label" in task_config:  # JSON turned the class ids into strings
        task_config["id2label"] = {int(k): v for k, v in task_config["id2label"].items()}
    if meta["method"] != BOTTLENECK:  # bottleneck adapters are always safetensors (written by llmkit)
        weights_kwargs("model.name_or_path", peft_files(adapter_dir, meta["name"]), allow_pickle, allow_key,
                       safe_names=ADAPTER_SAFE)
    check_model_dir("model.name_or_path", path)
    load_kwargs.update(weights_kwargs("model.name_or_path", path, allow_pickle, allow_key))
    try:
        with quiet_transformers():
            base = auto_cls.from_pretrained(path, revision=meta.get("revision"), **task_config, **load_kwargs)
    except load_errors() as e:
        if is_safetensors_missing(e):
            raise UserError(f"model.name_or_path: the adapter's base model: "
                            f"{hub_pickle_refusal(meta['base_model'], allow_key)}") from None
        why = explain_load_error(e, "model.name_or_path", meta["base_model"], path, allow_key)
        raise UserError(f"model.name_or_path: cannot load the base model {meta['base_model']!r} of the adapter in "
                        f"{adapter_dir}: {why.removeprefix('model.name_or_path: ')}") from None
    if meta.get("pad_token_id") is not None:
        base.config.pad_token_id = meta["pad_token_id"]
    return apply_saved_adapter(base, adapter_dir, meta, adapter_name).eval()


def apply_saved_adapter(base: Any, adapter_dir: Path, meta: dict, adapter_name: str | None = None) -> Any:
    """`base` with the adapter saved in `adapter_dir` on it (PEFT's wrapper, or llmkit's bottleneck hooks)."""
    try:
        if meta["method"] == BOTTLENECK:
            from llmkit.models.bottleneck import load_bottleneck

            return load_bottleneck(base, adapter_dir)
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return PeftModel.from_pretrained(base, str(peft_files(adapter_dir, meta["name"])),
                                             adapter_name=adapter_name or meta["name"])
    except load_errors() as e:
        why = adapter_weights_problem(adapter_dir) or f"cannot load the adapter in {adapter_dir}: {first_line(e)}"
        raise UserError(f"model.name_or_path: {why}") from None


def load_sentence_adapter(adapter_dir: Path, *, pooling: str | None = None, max_length: int | None = None,
                          allow_pickle: bool = False, allow_key: str = "model.allow_pickle",
                          pooling_key: str = "pooling") -> Any:
    """A sentence-embedding adapter run as a SentenceTransformer: its base model (with the pooling it trained with,
    unless `pooling` names another) and the adapter on the transformer inside, in eval mode."""
    meta = read_metadata(adapter_dir)
    settings = meta.get("sentence") or {}
    if meta["method"] != BOTTLENECK:
        weights_kwargs("model.name_or_path", peft_files(adapter_dir, meta["name"]), allow_pickle, allow_key,
                       safe_names=ADAPTER_SAFE)
    model = load_sentence_model(base_model_path(meta), pooling=pooling or settings.get("pooling"),
                                max_length=max_length or settings.get("max_seq_length"), allow_pickle=allow_pickle,
                                key="model.name_or_path", label=meta["base_model"], pooling_key=pooling_key)
    model[0].model = apply_saved_adapter(model[0].model, adapter_dir, meta)
    return model.eval()


def adapter_weights_problem(adapter_dir: Path) -> str | None:
    """The adapter weights file in `adapter_dir` (or its named subfolder) that is truncated or corrupt, if any."""
    for f in sorted(adapter_dir.rglob("*")):
        problem = (safetensors_problem(f) if f.suffix == ".safetensors" else
                   pickle_zip_problem(f) if f.suffix == ".bin" else None)
        if problem:
            return f"the adapter in {adapter_dir}: {problem}"
    return None


def peft_files(adapter_dir: Path, name: str) -> Path:
    """Where PEFT put the adapter's files: a subfolder named after the adapter unless it is "default"."""
    return adapter_dir / name if (adapter_dir / name / "adapter_config.json").is_file() else adapter_dir


AUTO_CLASSES = {"sequence-classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification", "causal-lm": "AutoModelForCausalLM",
                "masked-lm": "AutoModelForMaskedLM", "sentence-embedding": "AutoModel",
                "preference": "AutoModelForCausalLM", "reward-model": "AutoModelForSequenceClassification"}


def describe(model: Any, spec: Any) -> str:
    """One line on what the adapter changes, e.g. `lora r=8 on query, value; trains classifier too`."""
    if spec.method == "bottleneck":
        settings = model._bottleneck_settings
        sites = len(model.bottleneck_adapters)
        heads = getattr(model, "_bottleneck_trainable_modules", [])
        return (f"bottleneck ({settings.placement}, reduction {settings.reduction_factor}, {settings.activation}) at "
                f"{sites} sites" + (f"; trains {', '.join(heads)} too" if heads else ""))
    config = model.peft_config[spec.name]
    targets = getattr(config, "target_modules", None)
    shown = ", ".join(sorted(targets)) if isinstance(targets, (set, list)) else targets
    options = {k: v for k, v in spec.passthrough.items() if k not in ("target_modules", "modules_to_save")}
    detail = " ".join(f"{k}={v}" for k, v in options.items())
    names = [name for name, _ in model.named_modules()]
    heads = sorted(h for h in set(config.modules_to_save or [])  # PEFT lists classifier and score for every model
                   if any(n == h or n.endswith("." + h) for n in names))
    return (f"{spec.method}{' ' + detail if detail else ''}" + (f" on {shown}" if shown else "")
            + (f"; trains {', '.join(heads)} too" if heads else ""))


# ---------------------------------------------------------------- merging


def merge_inputs(reference: str) -> list[tuple[str, Path]]:
    """What `adapter merge` reads, which its output must not be: the adapter run and, when it is a local folder,
    its base model."""
    inputs = [("adapter run", Path(reference).expanduser().resolve())]
    adapter_dir = find_adapter_dir(reference)
    base = read_metadata(adapter_dir).get("base_model_path") if adapter_dir is not None else None
    if isinstance(base, str) and Path(base).is_dir():
        inputs.append(("base model", Path(base).resolve()))
    return inputs


def merge_adapter(reference: str, output: Path, prepare_output: Callable[[Path], Path] | None = None) -> dict:
    """Merge a LoRA-family adapter into its base weights; write a standalone transformers model to `output`.

    `prepare_output(output)` claims the output directory once the merge has worked (the CLI checks and marks it
    as an llmkit output, see training/rundir.py); without it, `output` must be new or empty."""
    from transformers import AutoTokenizer

    adapter_dir = find_adapter_dir(reference)
    if adapter_dir is None:
        raise UserError(f"adapter merge: {reference} holds no adapter (no {ADAPTER_DIR}/{METADATA}); give the run "
                        "directory of an `llmkit adapter` run. A full fine-tuning run's model/ is already "
                        "standalone.")
    meta = read_metadata(adapter_dir)
    if meta["method"] == BOTTLENECK:
        raise UserError("adapter merge: bottleneck adapters add a non-linear layer (up(act(down(h)))) that cannot "
                        "be folded into the base weights; use the run directory as the model instead (llmkit eval, "
                        "llmkit.load_model).")
    from peft import PromptLearningConfig

    if issubclass(peft_methods()[meta["method"]], PromptLearningConfig):
        raise UserError(f"adapter merge: {meta['method']} learns virtual tokens, not weight updates, so there is "
                        "nothing to merge into the base; use the run directory as the model instead.")
    if prepare_output is None and output.exists() and any(output.iterdir()):
        raise UserError(f"--output: {output} already exists and is not empty; nothing was changed. Choose another "
                        "directory.")
    model = load_adapter_model(adapter_dir)
    sentence = meta["task"] == "sentence-embedding"  # merged into the transformer inside; saved with its pooling
    try:
        merged = (model[0].model if sentence else model).merge_and_unload()
    except (AttributeError, ValueError, NotImplementedError) as e:
        raise UserError(f"adapter merge: PEFT cannot merge {meta['method']} adapters: {first_line(e)}") from None
    if prepare_output is None:
        output.mkdir(parents=True, exist_ok=True)
    else:
        output = prepare_output(output)
    if sentence:
        model[0].model = merged
        save_sentence_model(model, output)
        return meta
    merged.save_pretrained(str(output))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(output))
    return meta


# ---------------------------------------------------------------- library loading


def load_reference(reference: str, adapters: list[str] | tuple[str, ...] = (),
                   allow_pickle: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) from an llmkit run directory (full or adapter), an adapter folder, a model directory or
    a hub id; `adapters` loads further adapter runs onto the same base model, each under its adapter name
    (switch with `model.set_adapter(name)`). Weights load from safetensors only unless `allow_pickle` (torch
    pickles can run arbitrary code)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    adapter_dir = find_adapter_dir(reference)
    if adapter_dir is not None and read_metadata(adapter_dir)["task"] == "sentence-embedding":
        return _sentence_run(adapter_dir, adapters, allow_pickle)
    if adapter_dir is not None:
        model = load_adapter_model(adapter_dir, allow_pickle=allow_pickle, allow_key="allow_pickle")
        tokenizer_dir = str(adapter_dir)
    else:
        path = Path(reference).expanduser()
        if (path / "config.yaml").is_file() and (path / "model" / "config.json").is_file():
            path = path / "model"  # a full llmkit run directory
            if is_sentence_model(path):  # a sentence-embedding run: the SentenceTransformer it saved
                return _sentence_run(path, adapters, allow_pickle)
        try:
            source = resolve_model_path(str(path) if path.exists() else reference)
        except ModelNotFound as e:
            raise UserError(str(e)) from None
        check_model_dir("reference", source)
        safety = weights_kwargs("reference", source, allow_pickle, "allow_pickle")
        try:
            with quiet_transformers():
                config = AutoConfig.from_pretrained(source)
                auto = auto_class_for(config.architectures or [])
                model = low_rank.from_pretrained(getattr(transformers, auto), source, **safety).eval()
        except load_errors() as e:
            raise UserError(explain_load_error(e, "reference", reference, source, "allow_pickle")) from None
        tokenizer_dir = source
    for extra in adapters:
        add_saved_adapter(model, extra, adapter_dir, allow_pickle)
    problem = tokenizer_dir_problem("reference", tokenizer_dir)
    if problem:
        raise UserError(f"reference: {problem}")
    return model, AutoTokenizer.from_pretrained(tokenizer_dir)


def _sentence_run(model_dir: Path, adapters: list[str] | tuple[str, ...], allow_pickle: bool) -> tuple[Any, Any]:
    """A sentence-embedding run (its model/ or its adapter/) as a SentenceTransformer and its tokenizer."""
    if adapters:
        raise UserError(f"adapters: {model_dir.parent} is a sentence-embedding run (a SentenceTransformer); "
                        "several adapters share a base only for the transformers tasks. Load each run on its own.")
    if (model_dir / METADATA).is_file():
        model = load_sentence_adapter(model_dir, allow_pickle=allow_pickle, allow_key="allow_pickle")
    else:
        model = load_sentence_model(str(model_dir), allow_pickle=allow_pickle, key="reference")
    return model, model.tokenizer


def auto_class_for(architectures: list[str]) -> str:
    """The transformers Auto class for a saved architecture name (e.g. BertForSequenceClassification)."""
    names = " ".join(architectures)
    for marker, auto in (("SequenceClassification", "AutoModelForSequenceClassification"),
                         ("TokenClassification", "AutoModelForTokenClassification"),
                         ("MaskedLM", "AutoModelForMaskedLM"), ("CausalLM", "AutoModelForCausalLM"),
                         ("LMHead", "AutoModelForCausalLM")):
        if marker in names:
            return auto
    return "AutoModel"


def add_saved_adapter(model: Any, reference: str, first: Path | None, allow_pickle: bool = False) -> None:
    """Load another PEFT adapter run onto `model` (a PeftModel) under its own name; it must share the base model
    and the task head's shape (one transformers task model serves every adapter)."""
    adapter_dir = find_adapter_dir(reference)
    if adapter_dir is None or first is None:
        raise UserError(f"adapters: {reference if adapter_dir is None else 'the first model'} is not an llmkit "
                        "adapter run; several adapters load onto the base of a first adapter run.")
    meta, base = read_metadata(adapter_dir), read_metadata(first)
    if BOTTLENECK in (meta["method"], base["method"]):
        raise UserError("adapters: bottleneck adapters cannot share a model with other adapters; load each run on "
                        "its own.")
    differs = [key for key in ("base_model_path", "task", "task_config") if meta.get(key) != base.get(key)]
    if differs:
        raise UserError(f"adapters: {reference} was trained on a different base or task ({', '.join(differs)} "
                        f"differ from {first.parent}); load it on its own.")
    if meta["name"] in model.peft_config:
        raise UserError(f"adapters: two adapters are named {meta['name']!r}; give each run its own adapter.name.")
    weights_kwargs("adapters", peft_files(adapter_dir, meta["name"]), allow_pickle, "allow_pickle",
                   safe_names=ADAPTER_SAFE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.load_adapter(str(peft_files(adapter_dir, meta["name"])), adapter_name=meta["name"])
