"""`llmkit compress`: make a trained model smaller and faster — structured pruning (attention heads, feed-forward
neurons, whole layers; gradient importance, Michel et al. 2019), unstructured magnitude pruning, and torchao
int8 quantization — and measure what each step costs: quality, parameters, size on disk, CPU latency and
throughput against the original, in one process.

Reads top to bottom: input model -> tokenizer -> evaluation data -> a plan per step (checked, printed) ->
claim the run directory -> apply each step, save it, score it -> time every stage, alternating -> metrics.json,
report.md (table + quality-vs-size plot).

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmkit.config.sections import TRAIN_DEFAULTS, DataConfig, ModelConfig, TokenizerConfig, TrainConfig, opt
from llmkit.data.classification import prepare_classification_data
from llmkit.data.eval_text import read_eval_text
from llmkit.errors import ConfigIssue, UserError
from llmkit.models import compression as surgery
from llmkit.models.loading import (
    check_sequence_length,
    count_parameters,
    load_model,
    load_tokenizer,
    model_kind,
    model_source,
)
from llmkit.models.quiet import quiet_transformers
from llmkit.models.student import student_from_teacher
from llmkit.smoke import Shrink, SmokeSpec, honoured
from llmkit.training import rundir
from llmkit.training.compression import (
    EvalSet,
    Stage,
    benchmark,
    plot_quality_vs_size,
    rows,
    size_on_disk,
    table,
)
from llmkit.training.report import write_report

COMMAND = "compress"
AUTO_CLASSES = {"sequence-classification": "AutoModelForSequenceClassification",
                "causal-lm": "AutoModelForCausalLM"}
_UNSET = object()
ORDER = ("prune", "low_rank", "recover", "quantize")
MAGNITUDE_NOTE = ("unstructured magnitude pruning zeroes weights but keeps every tensor's shape: without sparse "
                  "kernels it saves no time and no memory (the size on disk is unchanged too)")


def _fraction_issue(key: str, value: float | None) -> list[ConfigIssue]:
    if value is not None and not 0 < value < 1:
        return [ConfigIssue(key, f"must be a fraction strictly between 0 and 1, got {value}.")]
    return []


@dataclass
class PruneStep:
    """Structured pruning (a smaller dense model) and/or unstructured magnitude pruning."""

    heads: int | None = opt("Attention heads removed from every layer (the same number in each: a config holds "
                            "one head count), each layer's least important by gradient (Michel et al. 2019). "
                            "Llama family: saved in its own format; BERT family: recorded as llmkit_attention_heads "
                            "in config.json, loaded by llmkit's loader (not plain transformers).",
                            default=None)
    ffn_fraction: float | None = opt("Share of feed-forward neurons removed from every layer (0-1, exclusive), "
                                     "each layer's least important by gradient.", default=None)
    drop_layers: list[int] | None = opt("Transformer layers (0-based) removed whole, before heads and neurons are "
                                        "scored.", default=None)
    magnitude: float | None = opt("Unstructured: share of each block Linear's smallest-magnitude weights set to "
                                  f"zero (0-1, exclusive); {MAGNITUDE_NOTE}.", default=None)
    importance_batches: int = opt("Batches of 8 training rows (data.train_file; else the evaluation rows) whose "
                                  "loss gradients score heads and neurons.", default=8)

    def validate(self) -> list[ConfigIssue]:
        issues = _fraction_issue("ffn_fraction", self.ffn_fraction) + _fraction_issue("magnitude", self.magnitude)
        if self.heads is None and self.ffn_fraction is None and not self.drop_layers and self.magnitude is None:
            issues.append(ConfigIssue("heads", "nothing to prune: set heads, ffn_fraction, drop_layers or "
                                               "magnitude."))
        if self.heads is not None and self.heads < 1:
            issues.append(ConfigIssue("heads", f"must be >= 1 (heads removed per layer), got {self.heads}."))
        layers = self.drop_layers or []
        if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
            issues.append(ConfigIssue("drop_layers", f"layer indices are 0-based, >= 0 and listed once, got {layers}."))
        if self.importance_batches < 1:
            issues.append(ConfigIssue("importance_batches", f"must be >= 1, got {self.importance_batches}."))
        return issues


@dataclass
class QuantizeStep:
    """Post-training quantization with torchao (the last step)."""

    method: str = opt("torchao int8-dynamic (int8 weights, activations quantized per token at run time) or "
                      "int8-weight-only: safetensors that plain transformers loads; torch-int8-dynamic: PyTorch's "
                      "own dynamic int8 Linear (x86/fbgemm kernels; faster than torchao's on CPUs), saved as "
                      "safetensors that llmkit's loader reads. "
                      f"{' | '.join(surgery.GPU_METHODS)} need a CUDA GPU and are refused here.",
                      default="int8-dynamic")
    int8_embeddings: bool = opt("torch-int8-dynamic: also store the embedding tables as int8 rows (one scale per "
                                "row) on disk, float32 again when loaded: a much smaller file, the same memory.",
                                default=False)

    def validate(self) -> list[ConfigIssue]:
        if self.int8_embeddings and self.method != "torch-int8-dynamic":
            return [ConfigIssue("int8_embeddings", "only applies to method torch-int8-dynamic.")]
        if self.method in surgery.GPU_METHODS:
            return [ConfigIssue("method", f"{self.method}: {surgery.GPU_METHODS[self.method]}; llmkit compress "
                                          f"measures on the CPU, so use {' or '.join(surgery.CPU_METHODS)}.")]
        if self.method not in surgery.CPU_METHODS:
            return [ConfigIssue("method", f"unknown method {self.method!r}; choose "
                                          f"{', '.join(surgery.CPU_METHODS)}.")]
        return []


@dataclass
class LowRankStep:
    """Truncated SVD of the Linear layers whose names match: each becomes two smaller Linear layers."""

    pattern: str = opt("A regular expression searched in each Linear layer's dotted name, e.g. "
                       "'intermediate\\.dense|output\\.dense' (BERT feed-forward) or 'mlp\\.' (Llama).")
    rank: int | None = opt("The rank r of every matched layer (at most min(out, in)).", default=None)
    energy: float | None = opt("Instead of rank: per layer, the smallest rank whose singular values keep this share "
                               "of the sum of squared singular values (0-1, exclusive).", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = _fraction_issue("energy", self.energy)
        if (self.rank is None) == (self.energy is None):
            issues.append(ConfigIssue("rank", "give exactly one of rank or energy."))
        if self.rank is not None and self.rank < 1:
            issues.append(ConfigIssue("rank", f"must be >= 1, got {self.rank}."))
        return issues


@dataclass
class RecoverStep:
    """A short training of the compressed model on data.train_file, with the train: section's settings (as
    finetune and distill): plain fine-tuning, or distillation from the original model as the teacher."""

    method: Literal["distill", "finetune"] = opt("distill: the original model is the teacher (loss alpha * CE + "
                                                 "(1 - alpha) * tau^2 * KL, as llmkit distill); finetune: the task "
                                                 "loss only.", default="distill")
    alpha: float = opt("distill: weight of the hard-label (or next-token) cross-entropy; 1 - alpha weighs the KL to "
                       "the teacher.", default=0.5)
    temperature: float = opt("distill: softmax temperature tau (> 0).", default=2.0)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        if not 0 <= self.alpha <= 1:
            issues.append(ConfigIssue("alpha", f"must be between 0 and 1, got {self.alpha}."))
        if self.temperature <= 0:
            issues.append(ConfigIssue("temperature", f"must be > 0, got {self.temperature}."))
        if self.method == "finetune" and (self.alpha, self.temperature) != (0.5, 2.0):
            issues.append(ConfigIssue("method", "alpha and temperature only apply to method: distill."))
        return issues


@dataclass
class CompressStepConfig:
    """One step: exactly one of prune, recover or quantize."""

    prune: PruneStep | None = opt("Prune heads, neurons, layers (structured) or weights (magnitude).", default=None)
    low_rank: LowRankStep | None = opt("Factorise Linear layers by truncated SVD (loaded by llmkit's loader).",
                                       default=None)
    recover: RecoverStep | None = opt("Train the compressed model briefly (finetune, or distill from the original).",
                                      default=None)
    quantize: QuantizeStep | None = opt("Quantize (torchao); must be the last step.", default=None)

    @property
    def kind(self) -> str | None:
        given = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        return given[0] if len(given) == 1 else None

    def validate(self) -> list[ConfigIssue]:
        if self.kind is not None:
            return []
        given = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        found = (f"this one gives {len(given)} ({', '.join(given)}): make each its own step" if given else
                 "this one gives none (a kind with nothing after it, like `quantize:` or `quantize: null`, is empty: "
                 "write `quantize: {}` for its defaults)")
        return [ConfigIssue("", "each step is exactly one of prune: {...}, low_rank: {...}, recover: {...} or "
                                f"quantize: {{...}}; {found}.")]


@dataclass
class CompressSection:
    """The steps, in order, and how they are measured."""

    steps: list[CompressStepConfig] = opt("The steps, applied in order, e.g. [{prune: {ffn_fraction: 0.5}}, "
                                          "{quantize: {method: int8-dynamic}}]; each kind at most once, in the "
                                          "order prune, low_rank, recover, quantize.")
    timing_rounds: int = opt("Rounds of CPU timing; each round times every stage in turn (batch 1 latency, batch "
                             "32 throughput), the median round is reported.", default=5)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        kinds = [step.kind for step in self.steps]
        if not self.steps:
            issues.append(ConfigIssue("steps", "no steps: list at least one, e.g. [{quantize: {}}]."))
        for kind in sorted({k for k in kinds if k and kinds.count(k) > 1}):
            issues.append(ConfigIssue("steps", f"{kind} is listed {kinds.count(kind)} times; list each step once "
                                               "(one step can hold several settings)."))
        order = [k for k in ORDER if k in kinds]
        if "quantize" in kinds and kinds.index("quantize") != len(kinds) - 1:
            issues.append(ConfigIssue("steps", "quantize must be the last step (a quantized model is not pruned "
                                               "further)."))
        elif len(set(kinds)) == len(kinds) and None not in kinds and kinds != order:
            issues.append(ConfigIssue("steps", f"steps run in the order {', '.join(ORDER)} (each changes what the "
                                               f"next one works on); list them as {', '.join(order)}."))
        if "low_rank" in kinds and "quantize" in kinds:
            issues.append(ConfigIssue("steps", "quantize after low_rank is not supported: transformers' torchao "
                                               "loader builds the model from its config, which has no low-rank "
                                               "layers. Use one or the other."))
        if "quantize" in kinds and self.steps[kinds.index("quantize")].quantize.method in surgery.TORCHAO_METHODS:
            try:
                surgery.import_torchao("compress.steps.quantize")
            except UserError as e:
                issues.append(ConfigIssue("steps", str(e).removeprefix("compress.steps.quantize: ")))
        if "recover" in kinds and "prune" in kinds and kinds.index("recover") > kinds.index("prune"):
            prune = self.steps[kinds.index("prune")].prune
            if prune.magnitude is not None:
                issues.append(ConfigIssue("steps", "recover after prune.magnitude would train the zeroed weights "
                                                   "back (the sparsity mask is not kept while training); recover "
                                                   "first, or prune by magnitude without recover."))
        if self.timing_rounds < 1:
            issues.append(ConfigIssue("timing_rounds", f"must be >= 1, got {self.timing_rounds}."))
        return issues


@dataclass
class CompressConfig:
    """`llmkit compress` config."""

    model: ModelConfig = opt("The trained model: a run directory, a model directory or pkg:MODULE.")
    data: DataConfig = opt("Evaluation data (data.validation_file); data.train_file, when given, is what head and "
                           "neuron importance is scored on.")
    compress: CompressSection = opt("The steps and their measurement.")
    tokenizer: TokenizerConfig = opt("The tokenizer (default: the model's).", default_factory=TokenizerConfig)
    train: TrainConfig = opt("The recover step's training settings (any HF TrainingArguments field, as finetune); "
                             "without a recover step only train.seed and train.smoke apply.",
                             default_factory=TrainConfig)
    output_dir: str | None = opt("Run directory (default: runs/compress-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = self.tokenizer.refuse_training(COMMAND)
        if self.model.from_config is not None:
            issues.append(ConfigIssue("model.from_config", "llmkit compress compresses a trained model; give "
                                                           "model.name_or_path (a run or model directory)."))
        if self.data.validation_file is None:
            issues.append(ConfigIssue("data.validation_file", "set it: every step is measured on this data."))
        if self.train.resume is not None:
            issues.append(ConfigIssue("train.resume", "llmkit compress does not resume; run it again (with "
                                                      "--overwrite)."))
        recovers = any(step.kind == "recover" for step in self.compress.steps)
        if recovers and self.data.train_file is None:
            issues.append(ConfigIssue("data.train_file", "a recover step trains on it: set it."))
        given = sorted(k for k, v in self.train.passthrough.items()
                       if k != "seed" and TRAIN_DEFAULTS.get(k, _UNSET) != v)
        given += [k for k, default in (("precision", "auto"), ("on_nan", "stop"), ("cpu_dropout", "fast"))
                  if getattr(self.train, k) != default]  # llmkit's own training keys, read only by a recover step
        if given and not recovers:
            keys = ", ".join(f"train.{k}" for k in given)
            issues.append(ConfigIssue("train", f"{keys}: only a recover step trains; add one or remove them "
                                               "(train.seed and train.smoke apply)."))
        return issues


# ---------------------------------------------------------------- smoke mode


def smoke_adjust(cfg: CompressConfig, shrink: Shrink) -> None:
    """Smoke mode: the model shrunk keeping the layers drop_layers names (and one more); heads pruned in the same
    share of the tiny model's heads (its head count differs from the real model's)."""
    dropped = [i for step in cfg.compress.steps if step.prune for i in (step.prune.drop_layers or [])]
    pruned = [step.prune for step in cfg.compress.steps if step.prune and step.prune.heads]
    before = _head_layout(cfg) if pruned else None
    shrink.model_section(cfg.model, "model.", max(dropped) + 2 if dropped else None)
    after = _head_layout(cfg) if pruned else None
    for prune in pruned:
        if before is None or after is None:
            continue
        heads, kv_heads, _ = after
        group = heads // kv_heads
        share = prune.heads / before[0]
        scaled = min(max(group, round(share * heads / group) * group), heads - group)
        if scaled != prune.heads:
            shrink.note(f"prune.heads {prune.heads} of {before[0]} -> {scaled} of the tiny model's {heads}")
            prune.heads = scaled
    cfg.compress.timing_rounds = 1
    shrink.note("1 timing round")


def _head_layout(cfg: CompressConfig) -> tuple[int, int, int] | None:
    """(query heads, key/value heads, head size) from the input model's config.json; None when it has none to
    read here (a GGUF file, a hub id): the plan then checks the setting against the model itself."""
    import json

    try:
        path = Path(model_source(input_model(cfg))) / "config.json"
        config = json.loads(path.read_text())
        from transformers import PretrainedConfig

        return surgery.head_layout(PretrainedConfig(**config))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, UserError):
        return None


SMOKE = SmokeSpec(model_sections=(), trains=lambda cfg: any(s.kind == "recover" for s in cfg.compress.steps),
                  adjust=smoke_adjust)


# ---------------------------------------------------------------- the recipe


@honoured(COMMAND, SMOKE)
def run(cfg: CompressConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Plan every step (checked and printed), then apply, save and score each, time all stages against the
    original; return the final row (metrics.json holds every row)."""
    from llmkit.training.lifecycle import RunLifecycle

    run = RunLifecycle(cfg, COMMAND, config_path=config_path, overwrite=overwrite)
    model_cfg = input_model(cfg)
    tokenizer = load_tokenizer(model_cfg, cfg.tokenizer)
    kind = task_kind(model_cfg)
    model, _ = load_model(AUTO_CLASSES[kind], model_cfg, tokenizer)
    check_not_quantized(cfg, model)
    eval_set = build_eval_set(cfg, kind, tokenizer, model)
    params = count_parameters(model)[1]
    run.print(f"model: {type(model).__name__}, {params / 1e6:.2f} M parameters ({cfg.model.name_or_path}); "
              f"evaluation: {eval_set.metric} on {eval_set.describe()}")
    plans = plan_steps(cfg, model, eval_set, run)
    if dry_run:
        run.print("plan checked; nothing compressed or written (--dry-run)")
        return {"dry_run": True, "parameters": params, "steps": [p.summary() for p in plans]}
    run_dir = run.claim()
    run.write_run_files()
    source = Path(model_source(model_cfg))
    original = Stage("original", model, source, eval_set.quality(model), params, size_on_disk(source))
    run.print(describe_stage(original, eval_set))
    stages = [original]
    for number, plan in enumerate(plans, start=1):
        if isinstance(plan, RecoverPlan):
            stages.append(recover(plan, stages[-1], original, run, tokenizer, eval_set))
        else:
            target = step_folder(run_dir, number, len(plans), plan.name)
            stages.append(apply_step(plan, stages[-1], target, tokenizer, eval_set, AUTO_CLASSES[kind]))
        run.print(describe_stage(stages[-1], eval_set))
    run.print(f"timing: {cfg.compress.timing_rounds} round(s) of every stage in turn on the CPU ...")
    benchmark(stages, eval_set, cfg.compress.timing_rounds)
    return finish(cfg, run_dir, stages, eval_set, run)


def input_model(cfg: CompressConfig) -> ModelConfig:
    """The model section pointing at the model folder itself (a run directory's model/)."""
    found = rundir.find_run_directory(cfg.model.name_or_path)
    if found is None:
        return cfg.model
    if found.model_dir.name != "model":
        raise UserError(f"model.name_or_path: {cfg.model.name_or_path} is an adapter run; merge it first (llmkit "
                        "adapter merge RUN --output DIR) and compress the merged model.")
    return dataclasses.replace(cfg.model, name_or_path=str(found.model_dir))


def task_kind(model_cfg: ModelConfig) -> str:
    kind = model_kind(model_cfg)
    if kind not in AUTO_CLASSES:
        raise UserError(f"model.name_or_path: {model_cfg.name_or_path} is a {kind} model; llmkit compress takes a "
                        "sequence classifier (scored by accuracy) or a causal LM (scored by perplexity).")
    return kind


def check_not_quantized(cfg: CompressConfig, model: Any) -> None:
    """Refuse a quantized input, and a factorised (low-rank) one for the steps that need plain Linear layers."""
    kinds = [step.kind for step in cfg.compress.steps]
    factorised = [k for k in kinds if k in ("prune", "low_rank", "quantize")]
    if getattr(model.config, "llmkit_low_rank", None) and factorised:
        raise UserError(f"compress.steps.{factorised[0]}: {cfg.model.name_or_path} already holds low-rank "
                        f"(factorised) layers, which {factorised[0]} cannot work on; compress the model they were "
                        "made from instead (a recover step alone works on it).")
    method = surgery.is_quantized(model)
    if method is None:
        return
    step = "quantize" if "quantize" in kinds else kinds[0]
    raise UserError(f"compress.steps.{step}: {cfg.model.name_or_path} is already quantized ({method}); "
                    f"{'quantizing it again' if step == 'quantize' else 'its quantized weights cannot be pruned'} "
                    "is refused. Compress the unquantized model instead.")


def build_eval_set(cfg: CompressConfig, kind: str, tokenizer: Any, model: Any) -> EvalSet:
    """The evaluation rows (or text) and the rows importance is scored on, tokenized."""
    if kind == "causal-lm":
        window = min(cfg.data.max_length, getattr(model.config, "max_position_embeddings", None) or 512)
        text, _ = read_eval_text(cfg.data, "validation_file")  # compress measures this one text only
        if not text.strip():
            raise UserError(f"data.validation_file: {cfg.data.validation_file} holds no text to score.")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            raise UserError(f"data.validation_file: {cfg.data.validation_file} holds fewer than 2 tokens.")
        train_ids = ids
        if cfg.data.train_file is not None:
            source = dataclasses.replace(cfg.data, validation_file=cfg.data.train_file, test_file=None,
                                         max_eval_samples=cfg.data.max_train_samples)
            train_ids = tokenizer(read_eval_text(source)[0], add_special_tokens=False)["input_ids"]
        windows = [{"input_ids": train_ids[i:i + window]} for i in range(0, len(train_ids) - window + 1, window)]
        return EvalSet(kind, tokenizer, ids=ids, train_rows=windows or [{"input_ids": train_ids}], window=window,
                       train_source="data.train_file" if cfg.data.train_file else "data.validation_file")
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    data = prepare_classification_data(cfg.data, tokenizer, False, cfg.train.seed,
                                       label_names=labels, from_model=True)
    check_sequence_length(model, data.stats)  # as finetune and eval: a tensor size error mid-run otherwise
    evaluation = [dict(row) for row in data.splits["validation"]]
    train = [dict(row) for row in data.splits["train"]] if "train" in data.splits else evaluation
    return EvalSet(kind, tokenizer, rows=evaluation, train_rows=train, label_names=labels,
                   train_source="data.train_file" if "train" in data.splits else "data.validation_file")


# ---------------------------------------------------------------- plans


@dataclass
class PrunePlan:
    """What a prune step removes, chosen before anything is written; `work` is the model it is applied to (a copy
    of the input, layers already dropped), scored."""

    name = "prune"
    spec: PruneStep
    work: Any
    keep_layers: list[int]
    heads: list[list[int]] = field(default_factory=list)
    neurons: list[list[int]] = field(default_factory=list)
    ffn_width: int = 0  # before pruning
    expected_parameters: int = 0

    def summary(self) -> dict:
        return {"step": "prune", "keep_layers": self.keep_layers, "heads_removed": self.heads,
                "neurons_removed_per_layer": len(self.neurons[0]) if self.neurons else 0,
                "magnitude": self.spec.magnitude, "expected_parameters": self.expected_parameters}

    def describe(self) -> list[str]:
        lines = []
        if self.spec.drop_layers:
            lines.append(f"layers: drop {sorted(self.spec.drop_layers)}, keep {self.keep_layers}")
        if self.heads:
            lines.append("heads removed (per kept layer, by gradient importance): "
                         + "; ".join(f"layer {i}: {h}" for i, h in enumerate(self.heads)))
            if not surgery.own_head_format(self.work.config):
                lines.append(f"the heads kept are recorded as {surgery.HEADS_KEY} in config.json (a BERT config "
                             "derives the head size from its head count): llmkit's loader reads it (llmkit eval, "
                             "llmkit.load_model, model.name_or_path), plain transformers cannot")
        if self.neurons:
            lines.append(f"feed-forward neurons: {len(self.neurons[0])} of {self.ffn_width} removed in every layer "
                         "(each layer its least important)")
        if self.spec.magnitude:
            lines.append(f"magnitude: zero {self.spec.magnitude:.0%} of each block Linear's weights. Note: "
                         f"{MAGNITUDE_NOTE}")
        return lines


@dataclass
class QuantizePlan:
    name = "quantize"
    spec: QuantizeStep
    expected_parameters: int = 0

    def summary(self) -> dict:
        return {"step": "quantize", "method": self.spec.method, "expected_parameters": self.expected_parameters}

    def describe(self) -> list[str]:
        if self.spec.method == "torch-int8-dynamic":
            return ["PyTorch dynamic int8: every Linear's weights stored as int8 (a scale per output channel), "
                    "activations quantized per batch at run time (loaded by llmkit's loader)"
                    + ("; embedding tables stored as int8 rows" if self.spec.int8_embeddings else "")]
        return [f"torchao {self.spec.method}: every Linear's weights stored as int8"
                + (", activations quantized per token at run time" if self.spec.method == "int8-dynamic" else "")]


@dataclass
class RecoverPlan:
    name = "recover"
    spec: RecoverStep
    target: Path  # the training's folder (its model in model/)
    args: Any
    steps: int
    rows: int
    expected_parameters: int = 0

    def summary(self) -> dict:
        return {"step": "recover", "method": self.spec.method, "optimizer_steps": self.steps,
                "train_rows": self.rows, "expected_parameters": self.expected_parameters}

    def describe(self) -> list[str]:
        how = (f"distill from the original: {self.spec.alpha:g} x CE + {1 - self.spec.alpha:g} x tau^2 x KL, "
               f"tau={self.spec.temperature:g}" if self.spec.method == "distill" else "finetune: the task loss")
        return [f"{how}; {self.steps} optimizer steps over {self.rows} training rows (data.train_file)"]


def step_folder(run_path: Path, number: int, total: int, name: str) -> Path:
    """Where a step's model goes: model/ for the last step, steps/<n>-<step>/ for the others (a recover step's
    folder holds its training files and the model in model/)."""
    if number == total:
        return run_path if name == "recover" else run_path / "model"
    return run_path / "steps" / f"{number}-{name}"


def plan_steps(cfg: CompressConfig, model: Any, eval_set: EvalSet, run: Any) -> list[Any]:
    """A plan per step, checked against the model, printed."""
    plans: list[Any] = []
    params = count_parameters(model)[1]
    total = len(cfg.compress.steps)
    current = model  # the model as the steps planned so far leave it (structural steps are applied in memory)
    for number, step in enumerate(cfg.compress.steps, start=1):
        key = f"compress.steps[{number - 1}].{step.kind}"
        if step.prune is not None:
            plan = plan_prune(step.prune, current, eval_set, key)
            current = plan.work
        elif step.low_rank is not None:
            plan = plan_low_rank(step.low_rank, current, key)
            current = plan.work
        elif step.recover is not None:
            target = step_folder(run.path, number, total, "recover")
            args = run.arguments(target.relative_to(run.path) if target != run.path else None, eval_strategy="no",
                                 load_best_model_at_end=False)
            plan = RecoverPlan(step.recover, target, args, run.plan(args, len(eval_set.train_rows)),
                               len(eval_set.train_rows), params)
            # beside the trained copy stay the original (timing, the teacher of distill) and the stage it copies
            longest = max((len(row["input_ids"]) for row in eval_set.train_rows), default=1)
            run.memory(current, args, longest, logits=eval_set.kind == "causal-lm",
                       frozen=(model,) if current is model else (model, current))
        else:
            if step.quantize.method in surgery.TORCHAO_METHODS:
                surgery.torchao_config(step.quantize.method, key)  # torchao importable, method known
                if getattr(current.config, surgery.HEADS_KEY, None):
                    raise UserError(f"{key}.method: {step.quantize.method} loads the model with plain transformers, "
                                    "which cannot build a BERT whose attention heads were pruned "
                                    f"({surgery.HEADS_KEY}); use method torch-int8-dynamic (llmkit's loader).")
            plan = QuantizePlan(step.quantize, params)
        params = plan.expected_parameters
        run.print(f"step {number} {step.kind} (expected {params / 1e6:.3f} M parameters):\n  "
                  + "\n  ".join(plan.describe()))
        plans.append(plan)
    return plans


def plan_prune(spec: PruneStep, model: Any, eval_set: EvalSet, key: str) -> PrunePlan:
    """Check the prune settings against the model, drop the layers (on a copy), score heads and neurons."""
    layers = model.config.num_hidden_layers
    bad = [i for i in spec.drop_layers or [] if i >= layers]
    if bad:
        raise UserError(f"{key}.drop_layers: {bad} out of range; the model has {layers} layers (0-{layers - 1}).")
    keep = [i for i in range(layers) if i not in set(spec.drop_layers or [])]
    if not keep:
        raise UserError(f"{key}.drop_layers: that drops all {layers} layers; keep at least one.")
    if spec.heads is not None or spec.ffn_fraction is not None:
        surgery.block_parts(model, key)  # an architecture llmkit can prune
    groups = surgery.check_head_pruning(model, spec.heads, f"{key}.heads") if spec.heads is not None else 0
    work = student_from_teacher(model, keep) if spec.drop_layers else copy.deepcopy(model)
    plan = PrunePlan(spec, work, keep)
    batches = eval_set.loss_batches(spec.importance_batches) if spec.heads or spec.ffn_fraction else []
    if spec.heads is not None:
        scores = surgery.importance(work, batches, "heads", f"{key}.heads")
        heads, kv_heads, _ = surgery.head_layout(work)
        plan.heads = surgery.least_important(scores, spec.heads, heads // kv_heads)
    if spec.ffn_fraction is not None:
        width = surgery.ffn_width(work)
        remove = int(round(width * spec.ffn_fraction))
        if not 0 < remove < width:
            raise UserError(f"{key}.ffn_fraction: {spec.ffn_fraction} of {width} neurons is {remove}; it must "
                            f"remove at least one and keep at least one.")
        plan.neurons = surgery.least_important(surgery.importance(work, batches, "neurons", key), remove)
        plan.ffn_width = width
    plan.expected_parameters = count_parameters(work)[1] - surgery.removed_parameters(
        work, len(plan.heads[0]) if plan.heads else 0, groups, len(plan.neurons[0]) if plan.neurons else 0, key)
    if plan.heads:  # in memory, on the copy: the steps after this one plan on the pruned shapes
        surgery.prune_heads(work, plan.heads, f"{key}.heads")
    if plan.neurons:
        surgery.prune_neurons(work, plan.neurons, key)
    return plan


@dataclass
class LowRankPlan:
    name = "low_rank"
    spec: LowRankStep
    work: Any  # a copy of the model with the layers factorised (in memory)
    ranks: dict[str, int]
    dense: list[str]  # matched layers left as they are: their rank would not save parameters
    expected_parameters: int = 0

    def summary(self) -> dict:
        return {"step": "low_rank", "ranks": self.ranks, "kept_dense": self.dense,
                "expected_parameters": self.expected_parameters}

    def describe(self) -> list[str]:
        shown = sorted(self.ranks.items())
        ranks = "; ".join(f"{name}: {rank}" for name, rank in shown[:6]) + (
            f"; ... ({len(shown)} layers, ranks {min(self.ranks.values())}-{max(self.ranks.values())})"
            if len(shown) > 6 else "")
        lines = [f"truncated SVD ({f'rank {self.spec.rank}' if self.spec.rank else f'energy {self.spec.energy:g}'})"
                 f": {ranks or 'no layer'}"]
        if self.dense:
            lines.append(f"kept dense ({len(self.dense)}): the rank chosen would not save parameters: "
                         + ", ".join(self.dense[:4]) + (" ..." if len(self.dense) > 4 else ""))
        return lines


def plan_low_rank(spec: LowRankStep, model: Any, key: str) -> LowRankPlan:
    """The matched layers and their ranks (refused: no match, a rank above a layer's); factorised on a copy."""
    from llmkit.models import low_rank

    found = low_rank.matching_linears(model, spec.pattern, f"{key}.pattern")
    ranks = low_rank.choose_ranks(found, spec.rank, spec.energy, key)
    modules = dict(found)
    dense = [name for name, rank in ranks.items() if not low_rank.saves_parameters(modules[name], rank)]
    if spec.rank is not None and dense:
        layer = modules[dense[0]]
        size = layer.in_features * layer.out_features
        limit = -(-size // (layer.in_features + layer.out_features))  # ranks below this save parameters
        raise UserError(f"{key}.rank: rank {spec.rank} would make layer {dense[0]} ({layer.out_features} x "
                        f"{layer.in_features}) larger, not smaller; ranks below {limit} save parameters.")
    work = copy.deepcopy(model)
    kept = {name: rank for name, rank in ranks.items() if name not in dense}
    low_rank.factorize(work, kept)
    return LowRankPlan(spec, work, kept, dense, count_parameters(work)[1])


# ---------------------------------------------------------------- applying, measuring, reporting


def apply_step(plan: Any, previous: Stage, target: Path, tokenizer: Any, eval_set: EvalSet, auto_class: str
               ) -> Stage:
    """Apply one planned step to the previous stage's model, save it to `target` (a plain transformers model
    directory with the tokenizer), score it."""
    notes = []
    if isinstance(plan, (PrunePlan, LowRankPlan)):  # structure changed in memory when planned
        model = plan.work
        if isinstance(plan, PrunePlan) and plan.spec.magnitude:
            zeroed = surgery.magnitude_prune(model, plan.spec.magnitude)
            notes.append(f"{zeroed:,} weights zeroed; {MAGNITUDE_NOTE}")
        model.save_pretrained(target)
    elif plan.spec.method == "torch-int8-dynamic":
        from llmkit.models import dynamic_int8

        model = copy.deepcopy(previous.model).float().eval()
        dynamic_int8.quantize(model, embeddings=plan.spec.int8_embeddings)
        dynamic_int8.save(model, target)
    else:
        import transformers

        config = surgery.torchao_config(plan.spec.method, "compress.steps.quantize")
        with quiet_transformers():
            model = getattr(transformers, auto_class).from_pretrained(previous.directory, quantization_config=config)
            model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    model.eval()
    # quantization changes how parameters are stored, not how many there are (packed int8 layers hide theirs)
    params = previous.parameters if isinstance(plan, QuantizePlan) else count_parameters(model)[1]
    return Stage(plan.name, model, target, eval_set.quality(model), params, size_on_disk(target), notes=notes)


def recover(plan: RecoverPlan, previous: Stage, original: Stage, run: Any, tokenizer: Any, eval_set: EvalSet
            ) -> Stage:
    """Train a copy of the previous stage's model on the training rows (llmkit's training run: guard,
    checkpoints, log); with method distill, the original model is the teacher (llmkit distill's trainer)."""
    import datasets

    from llmkit.training.distill import DistillSettings, DistillTrainer

    spec = plan.spec
    distill = spec.method == "distill"
    student = copy.deepcopy(previous.model).train()
    settings = DistillSettings(alpha=spec.alpha if distill else 1.0, temperature=spec.temperature, beta=0.0,
                               causal_lm=eval_set.kind == "causal-lm")
    plan.target.mkdir(parents=True, exist_ok=True)
    result = run.train(run_dir=plan.target, args=plan.args, model=student, tokenizer=tokenizer,
                       train_dataset=datasets.Dataset.from_list(eval_set.train_rows), eval_dataset=None,
                       data_collator=eval_set.collate, trainer_cls=DistillTrainer,
                       teacher=original.model if distill else None, settings=settings)
    # accelerate wraps a mixed-precision model's forward in autocast; the stage is scored and timed as saved (fp32)
    model = result.trainer.accelerator.unwrap_model(result.trainer.model, keep_fp32_wrapper=False).eval()
    attention = previous.model.config._attn_implementation  # training on CPU may have switched to eager
    if model.config._attn_implementation != attention and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attention)  # timed as it is loaded again (config.json names none)
    directory = plan.target / "model"
    losses = [h["loss"] for h in result.trainer.state.log_history if "loss" in h]
    note = (f"recover ({spec.method}): {result.trainer.state.global_step} steps in "
            f"{result.metrics.get('train_runtime', 0):.1f} s" + (f", loss {losses[0]:.4f} -> {losses[-1]:.4f}"
                                                                  if losses else ""))
    return Stage(plan.name, model, directory, eval_set.quality(model), count_parameters(model)[1],
                 size_on_disk(directory), notes=[note])


def describe_stage(stage: Stage, eval_set: EvalSet) -> str:
    size = f", {stage.size_bytes / 1e6:.2f} MB on disk" if stage.size_bytes else ""
    notes = "".join(f"\n  note: {n}" for n in stage.notes)
    return f"{stage.name}: {eval_set.metric} {stage.quality}, {stage.parameters / 1e6:.3f} M parameters{size}{notes}"


def finish(cfg: CompressConfig, run_dir: Path, stages: list[Stage], eval_set: EvalSet, run: Any) -> dict:
    """metrics.json (every row, the final one flat at the top), report.md with the table and the plot."""
    all_rows = rows(stages, eval_set)
    final = {k: v for k, v in all_rows[-1].items() if k != "step"}
    metrics = {**final, "original_" + eval_set.metric: stages[0].quality, "rows": all_rows}
    rundir.write_json(run_dir / "metrics.json", metrics)
    plot_quality_vs_size(stages, eval_set, run_dir / "quality_vs_size.png")
    unit = "tokens" if eval_set.kind == "causal-lm" else "examples"
    how = (f"Quality: {eval_set.metric} on {eval_set.describe()} of data.validation_file. Size: the weight files "
           f"on disk. Timing on the CPU in this one process: batch 1 latency and batch 32 throughput ({unit}/s), "
           f"one warm-up pass per stage, then {cfg.compress.timing_rounds} round(s) timing every stage in turn; the "
           "median round is shown.")
    notes = [n for s in stages for n in s.notes]
    sections = [("Stages", table(stages, eval_set)), ("Quality vs size", "![quality vs size](quality_vs_size.png)"),
                ("How it was measured", how + "".join(f"\n\nNote: {n}" for n in notes))]
    summary = {"model": cfg.model.name_or_path, "steps": ", ".join(s.name for s in stages[1:]),
               "evaluation": f"{eval_set.metric} on {eval_set.describe()}", "saved": "model/ (the last step); "
               "steps/<n>-<step>/ (the steps before it)"}
    write_report(run_dir, "llmkit compress", summary, {k: v for k, v in final.items()}, sections, [])
    run.print(table(stages, eval_set))
    run.print(f"run directory: {run_dir}")
    return metrics
