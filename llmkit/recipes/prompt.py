"""`llmkit prompt`: classification by a language model's own predictions — a cloze template puts each example
around a mask, a verbalizer names each class's label words, and the class whose words the model scores highest
wins. Modes: zero-shot (no training), few-shot prompt-based fine-tuning on K examples per class (full or with
an adapter), in-context demonstrations, PEFT soft prompts. Seeds rerun sampling (and training) and report
mean ± std (the LM-BFF protocol); a head-based baseline can train on the same examples; contextual
calibration is reported beside the plain figure.

Reads top to bottom: tokenizer -> model kind -> data -> verbalizer -> rows -> per seed (sample, train,
evaluate) -> aggregate -> outputs.

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.config.adapter import AdapterSection
from llmkit.config.sections import DataConfig, ModelConfig, TokenizerConfig, TrainConfig, opt, seed_issue
from llmkit.data.classification import tokenize_splits
from llmkit.errors import ConfigIssue, UserError
from llmkit.metrics.classification import ClassificationMetrics
from llmkit.metrics.tables import markdown_table
from llmkit.models.adapters import adapter_metadata, attach_adapter, save_adapter, task_refusal
from llmkit.models.loading import (
    count_parameters,
    freeze,
    load_model,
    load_tokenizer,
    model_kind,
    model_label,
    model_source,
)
from llmkit.prompting.template import Template, check_label_words, label_word_ids, resolve_verbalizer, shared_label_word
from llmkit.smoke import SEEDS, Shrink, SmokeSpec, honoured
from llmkit.training import rundir
from llmkit.training.report import write_report

COMMAND = "prompt"
TRAINING_MODES = ("few-shot", "soft-prompt")
SOFT_PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")
VIRTUAL_TOKEN_METHODS = ("prompt_tuning", "p_tuning")  # prepend tokens to the input (prefix tuning: to the KV cache)
DEFAULT_VIRTUAL_TOKENS = 20
DEFAULT_SEPARATOR = "\n\n"


@dataclass
class PromptSection:
    """The template, the verbalizer and how to use them."""

    template: str = opt("Python format string with one {mask} and the example's text: {text} (or {text_a}), "
                        "{text_b} (data.text_pair_column) or any data column by name, e.g. '{text} It was {mask}.'")
    verbalizer: dict[str | int, list[str] | str] = opt(
        "Label words per class, by class name or index, e.g. {negative: [terrible], positive: [great, good]}.")
    mode: Literal["zero-shot", "few-shot", "in-context", "soft-prompt"] = opt(
        "zero-shot: score the validation data, no training. few-shot: prompt-based fine-tuning on "
        "shots_per_class examples per class (full, or with the adapter section). in-context: "
        "demonstrations_per_class labelled examples per class in front of every prompt, no training. "
        "soft-prompt: train a PEFT soft prompt (prompt_tuning, p_tuning, prefix_tuning) in front of the template.",
        default="zero-shot")
    multi_token: Literal["sum", "mean"] | None = opt(
        "Score label words of several tokens by the sum or mean of their tokens' log-probabilities; unset: every "
        "label word must be one token.", default=None)
    combine: Literal["mean", "max", "sum"] = opt("How a class's label words combine: the mean, max or sum of their "
                                                  "probabilities.", default="mean")
    chat_template: bool = opt("Causal LMs: put the prompt (the template up to {mask}) in a user turn of the "
                              "tokenizer's chat template; the label word starts the assistant's answer.",
                              default=False)
    shots_per_class: int | None = opt("K: training examples per class, sampled per seed (few-shot: required; "
                                      "soft-prompt: unset trains on all training data; in-context: demonstrations "
                                      "are drawn from these K).", default=None)
    demonstrations_per_class: int | None = opt("in-context: labelled examples per class rendered with the template "
                                               "(label word at the mask) in front of every prompt, sampled per "
                                               "seed.", default=None)
    demonstration_separator: str = opt("in-context: the text between demonstrations and the prompt.",
                                       default=DEFAULT_SEPARATOR)
    seeds: list[int] | None = opt("Rerun sampling (and training) once per seed and report mean ± std; default: "
                                  "[train.seed]. Not for zero-shot, which samples nothing.", default=None)
    head_baseline: bool = opt("few-shot/soft-prompt: also fine-tune a classification head on the same examples "
                              "per seed (same train settings and adapter), reported beside the prompt figures.",
                              default=False)
    calibrate: bool = opt("Contextual calibration: divide the class probabilities by those of content-free inputs "
                          "(calibration_inputs in every text field); reported beside the uncalibrated figures.",
                          default=False)
    calibration_inputs: list[str] = opt("calibrate: the content-free texts (their class probabilities are "
                                        "averaged).", default_factory=lambda: ["N/A"])
    soft_prompt_init: Literal["template", "random"] = opt(
        "soft-prompt with prompt_tuning: initialise the virtual tokens from the template's own words (PEFT's TEXT "
        "init), or randomly.", default="template")
    context_length: int | None = opt("Longest prompt in tokens (default: the model's context window).",
                                     default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        try:
            Template.parse(self.template)
        except ValueError as e:
            issues.append(ConfigIssue("template", str(e)))
        if not self.verbalizer:
            issues.append(ConfigIssue("verbalizer", "is empty; give every class its label words, e.g. "
                                                    "{negative: [terrible], positive: [great]}."))
        elif shared_label_word(self.verbalizer):
            issues.append(ConfigIssue("verbalizer", shared_label_word(self.verbalizer)))
        mode = self.mode
        if mode == "few-shot" and self.shots_per_class is None:
            issues.append(ConfigIssue("shots_per_class", "few-shot trains on K examples per class; set it (e.g. 16)."))
        if mode == "zero-shot" and self.shots_per_class is not None:
            issues.append(ConfigIssue("shots_per_class", "zero-shot does not train or sample; remove it, or use "
                                                         "mode few-shot."))
        for key in ("shots_per_class", "demonstrations_per_class", "context_length"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                issues.append(ConfigIssue(key, f"must be >= 1, got {getattr(self, key)}."))
        if mode == "in-context" and self.demonstrations_per_class is None:
            issues.append(ConfigIssue("demonstrations_per_class", "in-context needs the number of demonstrations "
                                                                  "per class (e.g. 2)."))
        if mode != "in-context":
            if self.demonstrations_per_class is not None:
                issues.append(ConfigIssue("demonstrations_per_class", f"only applies to mode in-context, not {mode}."))
            if self.demonstration_separator != DEFAULT_SEPARATOR:
                issues.append(ConfigIssue("demonstration_separator", f"only applies to mode in-context, not {mode}."))
        if self.seeds is not None:
            if mode == "zero-shot":
                issues.append(ConfigIssue("seeds", "zero-shot samples nothing, so a seed cannot change its result; "
                                                   "remove prompt.seeds."))
            elif not self.seeds or len(set(self.seeds)) != len(self.seeds):
                issues.append(ConfigIssue("seeds", f"give one or more distinct seeds, got {self.seeds}."))
            else:
                issues += seed_issue("seeds", self.seeds)
        if self.head_baseline and mode not in TRAINING_MODES:
            issues.append(ConfigIssue("head_baseline", f"compares training on the same examples; only with mode "
                                                       f"few-shot or soft-prompt, not {mode}."))
        if not self.calibrate and self.calibration_inputs != ["N/A"]:
            issues.append(ConfigIssue("calibration_inputs", "only applies with prompt.calibrate: true."))
        if self.calibrate and not self.calibration_inputs:
            issues.append(ConfigIssue("calibration_inputs", "give at least one content-free text, e.g. ['N/A']."))
        if self.soft_prompt_init != "template" and mode != "soft-prompt":
            issues.append(ConfigIssue("soft_prompt_init", f"only applies to mode soft-prompt, not {mode}."))
        return issues


@dataclass
class PromptConfig:
    """`llmkit prompt` config."""

    section_hints = {"task": "llmkit prompt does classification only: its classes are the verbalizer's keys (or "
                             "data.label_names), its task the template"}

    model: ModelConfig = opt("The language model (masked or causal) that scores the label words.")
    data: DataConfig = opt("Labelled data: validation (scored), training (sampled for few-shot, demonstrations, "
                           "soft prompts).")
    prompt: PromptSection = opt("Template, verbalizer and mode.")
    tokenizer: TokenizerConfig = opt("The tokenizer (default: the model's).", default_factory=TokenizerConfig)
    adapter: AdapterSection | None = opt("few-shot: train this adapter instead of the whole model; soft-prompt: the "
                                         "soft prompt (method prompt_tuning (default), p_tuning or prefix_tuning, "
                                         "with its PEFT options).", default=None)
    train: TrainConfig = opt("Training settings (few-shot, soft-prompt) and precision.", default_factory=TrainConfig)
    output_dir: str | None = opt("Run directory (default: runs/prompt-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = self.tokenizer.refuse_training(COMMAND) + self.data.label_separator_issues(
            "sequence-classification", False, command=COMMAND)
        mode = self.prompt.mode
        has_train = self.data.train_file is not None or self.data.dataset_name is not None
        if mode in TRAINING_MODES or mode == "in-context":
            if not has_train:
                what = "demonstrations are drawn from" if mode == "in-context" else f"{mode} trains on"
                issues.append(ConfigIssue("data.train_file", f"{what} the training data; set data.train_file."))
        has_eval = (self.data.validation_file is not None or self.data.dataset_name is not None
                    or self.data.validation_split is not None)
        if not has_eval:
            issues.append(ConfigIssue("data.validation_file", "prompt scores the validation data; set "
                                                              "data.validation_file (or data.validation_split)."))
        if self.model.from_config is not None and (self.adapter is not None or mode == "soft-prompt"):
            issues.append(ConfigIssue("model.from_config", "an adapter or soft prompt needs a pretrained base model "
                                                           "to adapt; set model.name_or_path."))
        if self.adapter is not None:
            method = self.adapter.method
            if mode not in TRAINING_MODES:
                issues.append(ConfigIssue("adapter", f"mode {mode} trains nothing; remove the adapter section (or use "
                                                     "mode few-shot / soft-prompt)."))
            elif mode == "few-shot" and method in SOFT_PROMPT_METHODS:
                issues.append(ConfigIssue("adapter.method", f"{method} is a soft prompt; use prompt.mode: "
                                                            "soft-prompt."))
            elif mode == "soft-prompt" and method not in SOFT_PROMPT_METHODS:
                issues.append(ConfigIssue("adapter.method", f"soft-prompt trains a soft prompt: prompt_tuning, "
                                                            f"p_tuning or prefix_tuning, not {method} (for {method}, "
                                                            "use prompt.mode: few-shot)."))
            for key in ("freeze_embeddings", "freeze_layers"):
                if getattr(self.model, key):
                    issues.append(ConfigIssue(f"model.{key}", "the base model is frozen already with an adapter; "
                                                              "remove this key."))
        return issues


# ---------------------------------------------------------------- run


@dataclass
class Setup:
    """What every seed shares: tokenizer, labelled data, the scoring plan and the renderer."""

    cfg: PromptConfig
    tokenizer: Any
    kind: str  # causal | masked
    data: Any  # LabelledSplits
    words: list[list[str]]
    plan: Any
    renderer: Any
    adapter: AdapterSection | None
    run: Any  # the RunLifecycle: launch state (only the main process prints and writes), precision, arguments

    @property
    def state(self) -> Any:
        return self.run.state

    @property
    def precision(self) -> str:
        return self.run.precision

    @property
    def labels(self) -> list[str]:
        return self.data.label_names

    @functools.cached_property
    def metrics_fn(self) -> Any:
        """Accuracy, macro and per-class scores (one instance: loading the metric scripts costs time)."""
        return ClassificationMetrics(self.labels)

    @property
    def auto_class(self) -> str:
        return "AutoModelForCausalLM" if self.kind == "causal" else "AutoModelForMaskedLM"

    @property
    def task(self) -> str:
        return "causal-lm" if self.kind == "causal" else "masked-lm"


SHOTS_HEADROOM = 4  # smoke mode keeps at least this many x K x classes training rows of a K-shot run


def smoke_rows(cfg: PromptConfig) -> int:
    """Training rows a smoke run keeps: enough to sample K (or the demonstrations) per class."""
    per_class = max(cfg.prompt.shots_per_class or 0, cfg.prompt.demonstrations_per_class or 0)
    return SHOTS_HEADROOM * per_class * len(cfg.prompt.verbalizer)


def smoke_adjust(cfg: PromptConfig, shrink: Shrink) -> None:
    """Smoke mode: the first SEEDS seeds (mean ± std still computed)."""
    if cfg.prompt.seeds and len(cfg.prompt.seeds) > SEEDS:
        cfg.prompt.seeds = list(cfg.prompt.seeds[:SEEDS])
        shrink.note(f"seeds {cfg.prompt.seeds}")


SMOKE = SmokeSpec(train_rows=smoke_rows, trains=lambda cfg: cfg.prompt.mode in TRAINING_MODES, adjust=smoke_adjust)


@honoured(COMMAND, SMOKE)
def run(cfg: PromptConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Score (and train) per the mode; return the final metrics (also in OUTPUT_DIR/metrics.json)."""
    from llmkit.training.lifecycle import RunLifecycle

    setup, model = prepare(cfg, RunLifecycle(cfg, COMMAND, config_path=config_path, overwrite=overwrite))
    say = setup.state.print
    mode = cfg.prompt.mode
    seeds = cfg.prompt.seeds or [cfg.train.seed]
    say(f"data: {describe_splits(setup.data.splits)}; {len(setup.labels)} classes "
        f"({', '.join(f'{n}: ' + '/'.join(w) for n, w in zip(setup.labels, setup.words))})")
    samples = plan_samples(setup, seeds)
    for line in example_prompt(setup, samples[0]):
        say(line)
    _, total = count_parameters(model)
    say(f"model: {type(model).__name__} ({setup.kind} LM), {total / 1e6:.2f} M parameters; mode {mode}"
        + (f", {len(seeds)} seed(s)" if mode != "zero-shot" else ""))
    if mode in TRAINING_MODES:
        trained = make_trainable(setup, model)  # once here: a bad adapter or freeze setting fails before the run
        from llmkit.training.arguments import check_best_metric

        check_best_metric(cfg.train, setup.metrics_fn.names())
        memory_estimate(setup, trained, samples[0].train_rows)
        del trained
    if dry_run:
        return {"dry_run": True, "mode": mode, "seeds": seeds, "label_names": setup.labels,
                "examples": {name: len(ds) for name, ds in setup.data.splits.items()}}
    run_dir = setup.run.claim()
    main = setup.state.is_main_process
    setup.run.write_run_files()
    per_seed: dict[str, dict] = {}
    if mode in TRAINING_MODES:
        del model  # every seed trains a fresh copy
    for sample in samples:
        out_dir = run_dir if mode == "zero-shot" else run_dir / f"seed-{sample.seed}"
        if sample.picked and main:
            write_sample(out_dir, **sample.picked)
        per_seed[sample.name] = (train_seed(setup, sample, out_dir) if mode in TRAINING_MODES
                                 else evaluate(setup, model, out_dir, sample))
    return finish(setup, run_dir, per_seed)


@dataclass
class Sample:
    """What one seed scores (and trains on). Rendered before the run directory exists, so a prompt that does
    not fit the context or a class short of examples fails without leaving a half-written run."""

    name: str  # the seed, or "zero-shot"
    seed: int
    eval_rows: dict[str, Any]  # split -> rendered rows
    calibration_rows: Any = None
    train_rows: Any = None
    picked: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # sampled training rows, by use


def memory_estimate(setup: Setup, model: Any, rows: Any) -> Any:
    """Print the memory estimate of training on the rendered prompts `rows` (training/memory.py): each example
    puts its scored variants in the batch; a masked LM's head computes vocabulary-wide logits at every position,
    a causal LM only at the scored ones (logits_to_keep)."""
    variants = max((len(v) for v in rows["variants"]), default=1)
    args = training_arguments(setup, None, setup.cfg.train.seed)
    return setup.run.memory(model, args, max(rows["length"], default=1), logits=setup.kind == "masked",
                            rows_per_example=variants)


def plan_samples(setup: Setup, seeds: list[int]) -> list[Sample]:
    """Per seed: sample the training examples (few-shot, soft-prompt) or demonstrations (in-context) and render
    every prompt."""
    from llmkit.prompting.data import sample_per_class

    p = setup.cfg.prompt
    renderer = setup.renderer

    def rendered() -> tuple[dict, Any]:
        rows = {split: renderer.encode_split(setup.data.splits[split]) for split in ("validation", "test")
                if split in setup.data.splits}
        return rows, renderer.content_free(p.calibration_inputs) if p.calibrate else None

    if p.mode == "zero-shot":
        return [Sample("zero-shot", setup.cfg.train.seed, *rendered())]
    if p.mode == "in-context":
        samples = []
        for seed in seeds:
            demonstrations = set_demonstrations(setup, seed)
            samples.append(Sample(str(seed), seed, *rendered(), picked={"demonstrations": demonstrations}))
        return samples
    eval_rows, calibration_rows = rendered()
    train = setup.data.splits["train"]
    samples = []
    for seed in seeds:
        picked = (sample_per_class(train["labels"], p.shots_per_class, seed, setup.labels, "shots_per_class")
                  if p.shots_per_class else list(range(len(train))))
        samples.append(Sample(str(seed), seed, eval_rows, calibration_rows,
                              train_rows=renderer.encode_split(train.select(picked)),
                              picked={"train_examples": picked}))
    return samples


def prepare(cfg: PromptConfig, run: Any = None) -> tuple[Setup, Any]:
    """Tokenizer, model (once, to know its kind and context), data, verbalizer ids and the renderer; `run` is the
    RunLifecycle (default: a new one, as `llmkit prompt` starts it)."""
    from llmkit.prompting.data import load_labelled_splits
    from llmkit.training.lifecycle import RunLifecycle

    p = cfg.prompt
    run = run or RunLifecycle(cfg, COMMAND)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    kind = language_model_kind(cfg, tokenizer)
    adapter = trained_adapter(cfg, kind)
    model, missing = load_model("AutoModelForCausalLM" if kind == "causal" else "AutoModelForMaskedLM", cfg.model,
                                tokenizer)
    if missing:  # e.g. an encoder saved without its MLM head: the label-word scores would be random
        raise UserError(f"model.name_or_path: {cfg.model.name_or_path} has no pretrained language-model head "
                        f"({', '.join(sorted(missing)[:4])}{', ...' if len(missing) > 4 else ''} would be newly "
                        "initialised), so its label-word scores would be random. Use a checkpoint that includes its "
                        "LM head, or llmkit finetune for a classification head.")
    template = Template.parse(p.template)
    with run.state.main_process_first():  # datasets caches what it reads: the main process first
        data = load_labelled_splits(cfg.data, template, cfg.train.seed, classes=[str(k) for k in p.verbalizer])
    if "validation" not in data.splits:
        raise UserError("data.validation_file: prompt scores the validation data; set data.validation_file.")
    words = resolve_verbalizer(p.verbalizer, data.label_names)
    plan, renderer = scoring(cfg, template, tokenizer, kind, words, data.label_names, adapter, model)
    return Setup(cfg, tokenizer, kind, data, words, plan, renderer, adapter, run), model


def language_model_kind(cfg: PromptConfig, tokenizer: Any) -> str:
    """causal or masked (as the scoring plan names them); a classification model, a masked LM's tokenizer
    without a mask token or a chat template the model cannot use are refused."""
    task = model_kind(cfg.model)
    if task not in ("causal-lm", "masked-lm"):
        raise UserError(f"model.name_or_path: prompt scores label words with a language model (masked or causal); "
                        f"{cfg.model.name_or_path} is a {task} model. For a classification head use llmkit "
                        "finetune.")
    kind = task.removesuffix("-lm")
    if kind == "masked" and tokenizer.mask_token_id is None:
        raise UserError("tokenizer.name_or_path: this masked LM's tokenizer has no mask token; give a tokenizer "
                        "with one (e.g. [MASK]).")
    if cfg.prompt.chat_template:
        if kind != "causal":
            raise UserError("prompt.chat_template: only for causal LMs; a masked LM fills the mask in place.")
        if not tokenizer.chat_template:
            raise UserError("prompt.chat_template: the tokenizer has no chat template; set tokenizer.chat_template "
                            "or turn prompt.chat_template off.")
    return kind


def trained_adapter(cfg: PromptConfig, kind: str) -> AdapterSection | None:
    """The adapter (or soft prompt) a training mode attaches, checked against the tasks it trains."""
    from llmkit.tasks import refuse_adapter_model

    p = cfg.prompt
    if p.mode in TRAINING_MODES:
        refuse_adapter_model(cfg.model, f"train ({p.mode})")
    adapter = soft_prompt_spec(cfg) if p.mode == "soft-prompt" else cfg.adapter
    if adapter is not None:
        tasks = [f"{kind}-lm"] + (["sequence-classification"] if p.head_baseline else [])
        refusal = next(filter(None, (task_refusal(adapter.method, task) for task in tasks)), None)
        if refusal:
            raise UserError(f"adapter.method: {refusal}" + (" (prompt.head_baseline trains a classification "
                                                            "head with it)" if p.head_baseline else ""))
    return adapter


def scoring(cfg: PromptConfig, template: Any, tokenizer: Any, kind: str, words: list[list[str]],
            labels: list[str], adapter: AdapterSection | None, model: Any) -> tuple[Any, Any]:
    """The scoring plan (each class's label-word ids) and the renderer that turns rows into prompts."""
    from llmkit.prompting.data import Renderer, label_context
    from llmkit.prompting.scoring import ScoringPlan

    p = cfg.prompt
    context = label_context(template, tokenizer, p.chat_template)
    ids = [[label_word_ids(tokenizer, w, context, kind) for w in class_words] for class_words in words]
    check_label_words(tokenizer, words, ids, labels, p.multi_token)
    plan = ScoringPlan(
        kind=kind, word_ids=[i for class_ids in ids for i in class_ids],
        word_class=[c for c, class_ids in enumerate(ids) for _ in class_ids], num_classes=len(words),
        multi_token=p.multi_token, combine=p.combine,
        virtual_tokens=(adapter is not None and adapter.method in VIRTUAL_TOKEN_METHODS) or prepends_tokens(model))
    columns = template.columns(cfg.data.text_column, cfg.data.text_pair_column)
    renderer = Renderer(template, columns, tokenizer, plan, cfg.data.max_length,
                        p.context_length or model_context(model), p.chat_template, p.demonstration_separator,
                        context_key="prompt.context_length" if p.context_length else None)
    return plan, renderer


def prepends_tokens(model: Any) -> bool:
    """A loaded soft-prompt run (prompt tuning, p-tuning) puts virtual tokens in front of every row."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.peft_type.value.lower() in VIRTUAL_TOKEN_METHODS)


def soft_prompt_spec(cfg: PromptConfig) -> AdapterSection:
    """The soft prompt to train: the adapter section (default prompt_tuning), with PEFT's defaults filled in."""
    spec = cfg.adapter or AdapterSection(method="prompt_tuning")
    spec = dataclasses.replace(spec, passthrough=dict(spec.passthrough))
    spec.passthrough.setdefault("num_virtual_tokens", DEFAULT_VIRTUAL_TOKENS)
    return spec


def model_context(model: Any) -> int:
    """The longest sequence the model takes (its position table), or no limit when it does not say."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def describe_splits(splits: dict) -> str:
    return ", ".join(f"{name} {len(ds)} examples" for name, ds in splits.items())


def example_prompt(setup: Setup, sample: Sample) -> list[str]:
    """The first example of each scored split as the model sees it (the first seed's prompt: a causal LM's
    context before the label word, a masked LM's text with its mask), its label and each class's first label
    word, in the format every command's dry run shows (data/preview.py)."""
    from llmkit.data.preview import block, render

    tok = setup.tokenizer
    words = " | ".join(f"{name}: {tok.decode(setup.plan.word_ids[setup.plan.word_class.index(c)])!r}"
                       for c, name in enumerate(setup.labels))
    lines = []
    for split, rows in sample.eval_rows.items():
        row = rows[rows["example"].index(0)]
        ids = row["variants"][0][:row["mask_start"][0]] if setup.plan.kind == "causal" else row["variants"][0]
        label = int(row["labels"])
        shown = f"label {setup.labels[label]} (id {label}); " if 0 <= label < len(setup.labels) else ""
        lines += [f"example {split}[0]: {len(ids)} tokens; {shown}label words {words}", *block(render(tok, ids))]
    return lines


def set_demonstrations(setup: Setup, seed: int) -> list[int]:
    """in-context: k demonstrations per class for this seed (from the K-shot sample when shots_per_class is set);
    returns their indices in the training data, in prompt order."""
    from llmkit.prompting.data import sample_per_class

    p = setup.cfg.prompt
    train = setup.data.splits["train"]
    all_labels = train["labels"]
    pool = list(range(len(train)))
    if p.shots_per_class is not None:
        pool = sample_per_class(all_labels, p.shots_per_class, seed, setup.labels, "shots_per_class")
    labels = [all_labels[i] for i in pool]
    picked = sample_per_class(labels, p.demonstrations_per_class, seed, setup.labels, "demonstrations_per_class")
    setup.renderer.set_demonstrations([train[pool[i]] for i in picked], [w[0] for w in setup.words])
    return [pool[i] for i in picked]


def write_sample(seed_dir: Path, **indices: list[int]) -> None:
    """sampled.json: which training examples (0-based rows of the training data) this seed used."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(seed_dir / "sampled.json", indices)


def training_arguments(setup: Setup, run_dir: Path, seed: int, **overrides: Any) -> Any:
    """TrainingArguments for one trainer of the run (a seed's, the head baseline's), checkpoints in its folder."""
    return setup.run.arguments(run_dir, seed=seed, remove_unused_columns=False, label_names=["labels"], **overrides)


def trainer_kwargs(setup: Setup) -> dict:
    """What a PromptTrainer needs beside model and arguments: the plan, the collator, the metrics."""
    from llmkit.prompting.scoring import PromptCollator

    metrics_fn = setup.metrics_fn
    return {"plan": setup.plan, "data_collator": PromptCollator(setup.plan, setup.tokenizer.pad_token_id or 0),
            "compute_metrics": lambda p: metrics_fn.compute(p.predictions.argmax(-1), p.label_ids)}


def evaluate(setup: Setup, model: Any, out_dir: Path, sample: Sample, trainer: Any = None) -> dict:
    """Score the validation (and test) data: metrics, calibrated metrics, predictions_<split>.jsonl."""
    import time

    from llmkit.prompting.scoring import PromptTrainer

    out_dir.mkdir(parents=True, exist_ok=True)
    if trainer is None:
        args = training_arguments(setup, out_dir, setup.cfg.train.seed, eval_strategy="no", save_strategy="no",
                                  load_best_model_at_end=False)
        trainer = PromptTrainer(model=model, args=args, processing_class=setup.tokenizer, **trainer_kwargs(setup))
        empty = out_dir / rundir.CHECKPOINTS
        if setup.state.is_main_process and empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()  # the Trainer makes its output directory; nothing is saved
    metrics_fn = setup.metrics_fn
    calibration = None
    if sample.calibration_rows is not None:
        calibration = _softmax(trainer.predict(sample.calibration_rows).predictions).mean(axis=0)
    metrics: dict[str, Any] = {}
    for split, rows in sample.eval_rows.items():
        prefix = "eval" if split == "validation" else "test"
        start = time.perf_counter()
        out = trainer.predict(rows, metric_key_prefix=prefix)
        seconds = time.perf_counter() - start
        metrics.update({k: v for k, v in out.metrics.items() if not k.endswith(("_runtime", "_per_second"))})
        metrics[f"{prefix}_examples_per_second"] = round(len(rows) / seconds, 2)
        scores, labels = out.predictions, out.label_ids
        calibrated = None
        if calibration is not None:
            import numpy as np

            calibrated = (np.log(_softmax(scores)) - np.log(calibration)).argmax(-1)
            metrics.update({f"{prefix}_calibrated_{k}": v for k, v in metrics_fn.compute(calibrated, labels).items()})
        if setup.state.is_main_process:  # predict() gathered every process's rows, in data order
            write_predictions(out_dir / f"predictions_{split}.jsonl", rows["example"], scores, labels, calibrated,
                              setup.labels)
    if calibration is not None:
        metrics["calibration_probabilities"] = {n: round(float(p), 6) for n, p in zip(setup.labels, calibration)}
    return metrics


def _softmax(scores: Any) -> Any:
    import numpy as np

    z = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def write_predictions(path: Path, examples: list[int], scores: Any, labels: Any, calibrated: Any,
                      names: list[str]) -> None:
    """One line per example, in data order: label, prediction, class log-scores (and calibrated prediction)."""
    import json

    lines = {}
    for j, example in enumerate(examples):
        record = {"example": int(example), "label": names[int(labels[j])],
                  "prediction": names[int(scores[j].argmax())],
                  "scores": {n: round(float(s), 5) for n, s in zip(names, scores[j])}}
        if calibrated is not None:
            record["calibrated_prediction"] = names[int(calibrated[j])]
        lines[int(example)] = json.dumps(record, ensure_ascii=False)
    path.write_text("".join(lines[i] + "\n" for i in sorted(lines)))


def train_seed(setup: Setup, sample: Sample, seed_dir: Path) -> dict:
    """few-shot / soft-prompt for one seed: sample K per class, train a fresh model on their prompts, evaluate;
    the head baseline trains on the same examples."""
    from transformers import set_seed

    from llmkit.prompting.scoring import PromptTrainer

    cfg = setup.cfg
    seed, picked, k = sample.seed, sample.picked["train_examples"], cfg.prompt.shots_per_class
    head = {}
    if cfg.prompt.head_baseline:  # first: its model is freed before the prompt-based one is built
        head = head_baseline(setup, setup.data.splits["train"].select(picked), seed, seed_dir / "head")
    set_seed(seed)
    model, missing = load_model(setup.auto_class, cfg.model, setup.tokenizer)
    model = make_trainable(setup, model, missing)
    trainable, total = count_parameters(model)
    setup.state.print(f"\nseed {seed}: training on {len(picked)} examples ({k or 'all'} per class); "
                      f"{trainable / 1e6:.3f} M of {total / 1e6:.2f} M parameters trainable")
    args = training_arguments(setup, seed_dir, seed)
    if cfg.train.resume and setup.adapter is not None and cfg.adapter.method == "p_tuning":
        setup.state.print("warning: train.resume with adapter.method p_tuning: PEFT checkpoints hold the computed "
                          "prompt embeddings, not the p-tuning encoder, so the resumed run is not exact.")
    result = setup.run.train(
        run_dir=seed_dir, args=args, model=model, tokenizer=setup.tokenizer,
        train_dataset=sample.train_rows, eval_dataset=sample.eval_rows["validation"], trainer_cls=PromptTrainer,
        save=adapter_saver(setup, setup.task) if setup.adapter else None, **trainer_kwargs(setup))
    metrics = dict(result.metrics)
    metrics.update(evaluate(setup, result.trainer.model, seed_dir, sample, trainer=result.trainer))
    metrics.update(trainable_params=trainable, total_params=total, train_examples=len(picked))
    metrics.update({f"head_{key}": value for key, value in head.items()})
    result.finish(metrics, [], summary={"seed": seed, "mode": cfg.prompt.mode}, headline=[
        k for k in ("eval_accuracy", "eval_calibrated_accuracy", "head_eval_accuracy") if k in metrics])
    return metrics


def make_trainable(setup: Setup, model: Any, missing: set[str] = frozenset()) -> Any:
    """The model with the adapter (or soft prompt) attached, or with model.freeze_* applied."""
    if setup.adapter is not None:
        return attach(setup, model, missing)

    freeze(model, setup.cfg.model.freeze_embeddings, setup.cfg.model.freeze_layers)
    return model


def attach(setup: Setup, model: Any, missing: set[str]) -> Any:
    """The adapter (or soft prompt) on the model; a prompt_tuning soft prompt starts from the template's words."""
    spec = setup.adapter
    init_text = setup.renderer.template.literal_text()
    wants_text = (spec.method == "prompt_tuning" and setup.cfg.prompt.soft_prompt_init == "template"
                  and "prompt_tuning_init" not in spec.passthrough)
    if not (wants_text and init_text):
        return attach_adapter(model, spec, setup.task, missing)
    with tempfile.TemporaryDirectory(prefix="llmkit-tokenizer-") as tokenizer_dir:
        setup.tokenizer.save_pretrained(tokenizer_dir)  # PEFT's TEXT init loads the tokenizer by path
        options = {**spec.passthrough, "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": init_text,
                   "tokenizer_name_or_path": tokenizer_dir}
        model = attach_adapter(model, dataclasses.replace(spec, passthrough=options), setup.task, missing)
    # The virtual tokens now hold the text's embeddings. Saved as TEXT, PEFT would need the (temporary) tokenizer
    # path again to load the adapter, only to overwrite that init with the trained weights.
    config = model.peft_config[spec.name]
    config.prompt_tuning_init, config.tokenizer_name_or_path = "RANDOM", None
    return model


def adapter_saver(setup: Setup, task: str):
    """Saves the trained adapter (or soft prompt) with what loading it needs, as `llmkit adapter` does."""
    cfg = setup.cfg

    def save(trainer, directory: Path) -> None:
        meta = adapter_metadata(trainer.model, setup.adapter, task, cfg.model.name_or_path,
                                model_source(cfg.model), cfg.model.revision)
        save_adapter(trainer.model, setup.tokenizer, directory, meta)

    return save


def head_baseline(setup: Setup, train: Any, seed: int, head_dir: Path) -> dict:
    """Head-based fine-tuning on the same examples (raw text, a new classification head): the baseline
    prompt-based fine-tuning is compared against (LM-BFF)."""
    from transformers import DataCollatorWithPadding, set_seed


    cfg = setup.cfg
    head_dir.mkdir(parents=True, exist_ok=True)
    splits = tokenize_splits({"train": train, "validation": setup.data.splits["validation"]}, setup.tokenizer,
                             cfg.data)
    set_seed(seed)
    labels = setup.labels
    model, missing = load_model("AutoModelForSequenceClassification", cfg.model, setup.tokenizer,
                                num_labels=len(labels), id2label=dict(enumerate(labels)),
                                label2id={n: i for i, n in enumerate(labels)},
                                problem_type="single_label_classification")
    if setup.adapter is not None:
        model = attach_adapter(model, setup.adapter, "sequence-classification", missing)
    metrics_fn = setup.metrics_fn
    setup.state.print(f"seed {seed}: head baseline on the same {len(train)} examples")
    args = training_arguments(setup, head_dir, seed)
    result = setup.run.train(run_dir=head_dir, args=args, model=model, tokenizer=setup.tokenizer,
                             train_dataset=splits["train"], eval_dataset=splits["validation"],
                             data_collator=DataCollatorWithPadding(setup.tokenizer), compute_metrics=metrics_fn,
                             preprocess_logits_for_metrics=metrics_fn.preprocess_logits_for_metrics,
                             save=adapter_saver(setup, "sequence-classification") if setup.adapter else None)
    out = result.trainer.predict(splits["validation"], metric_key_prefix="eval")
    return {k: v for k, v in out.metrics.items() if not k.endswith(("_runtime", "_per_second"))}


# ---------------------------------------------------------------- outputs


def aggregate(per_seed: dict[str, dict]) -> dict:
    """Mean and (sample) standard deviation over seeds of every evaluation figure."""
    keys = [k for k, v in next(iter(per_seed.values())).items() if isinstance(v, (int, float))
            and k.startswith(("eval_", "test_", "head_eval_", "head_test_"))]
    out = {}
    for key in keys:
        values = [m[key] for m in per_seed.values() if key in m]
        out[key] = statistics.fmean(values)
        if len(values) > 1:
            out[f"{key}_std"] = statistics.stdev(values)
    return out


def finish(setup: Setup, run_dir: Path, per_seed: dict[str, dict]) -> dict:
    """metrics.json (means, stds, per-seed figures), report.md and a printed summary."""
    cfg = setup.cfg
    metrics = aggregate(per_seed)
    metrics.update(mode=cfg.prompt.mode, precision=setup.precision)
    if cfg.prompt.mode != "zero-shot":
        metrics["seeds"] = [int(s) for s in per_seed]
        metrics["per_seed"] = per_seed
    else:
        metrics.update({k: v for k, v in per_seed["zero-shot"].items() if k not in metrics})
    if not setup.state.is_main_process:
        return metrics
    rundir.write_json(run_dir / "metrics.json", metrics)
    columns = [k for k in ("eval_accuracy", "eval_f1", "eval_calibrated_accuracy", "eval_calibrated_f1",
                           "head_eval_accuracy", "head_eval_f1") if k in metrics]
    table = markdown_table(["seed"] + columns, [[s] + [m.get(k) for k in columns] for s, m in per_seed.items()]
                           + ([["mean ± std"] + [_mean_std(metrics, k) for k in columns]] if len(per_seed) > 1
                              else []))
    summary = {"model": model_label(cfg.model), "mode": cfg.prompt.mode, "template": repr(cfg.prompt.template),
               "verbalizer": "; ".join(f"{n}: {', '.join(w)}" for n, w in zip(setup.labels, setup.words)),
               "run directory": str(run_dir)}
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    report = write_report(run_dir, f"llmkit prompt ({cfg.prompt.mode})", summary, numbers,
                          [("Per seed", table)], history=[])
    print(f"\n{table}\n")
    print("  ".join(f"{k}={_mean_std(metrics, k)}" for k in columns))
    print(f"run: {run_dir}  (report: {report.name})")
    return metrics


def _mean_std(metrics: dict, key: str) -> str:
    std = metrics.get(f"{key}_std")
    return f"{metrics[key]:.4f}" + (f" ± {std:.4f}" if std is not None else "")
