"""`llmkit distill`: knowledge distillation from a teacher into a smaller student — soft labels with a
temperature, hidden-state matching, teacher-labelled extra data — for sequence classification and causal LMs.

Reads top to bottom: teacher -> tokenizer -> data (+ teacher-labelled texts) -> student -> teacher cache ->
trainer -> train -> save -> teacher vs student report.

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.config.sections import (
    DataConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    check_model_path,
    opt,
)
from llmkit.data.cache import cache_error, cache_key, cache_root, file_digest
from llmkit.data.classification import prepare_classification_data
from llmkit.data.loading import load_file_split, load_raw_splits
from llmkit.data.preview import KINDS, preview_splits
from llmkit.errors import ConfigIssue, UserError
from llmkit.metrics.tables import markdown_table
from llmkit.models.loading import (
    check_sequence_length,
    check_vocabulary_fits,
    count_parameters,
    freeze,
    load_model,
    load_tokenizer,
    model_kind,
    model_label,
)
from llmkit.models.resolve import ModelNotFound, resolve_model_path
from llmkit.models.student import select_layers, student_from_teacher
from llmkit.smoke import EXTRA_TEXTS, Shrink, SmokeSpec, cap, honoured, model_references
from llmkit.tasks import TASKS, TaskConfig, describe_splits, refuse_adapter_model
from llmkit.training.arguments import check_best_metric, packed_rows
from llmkit.training.rundir import find_run_directory

COMMAND = "distill"
TEACHER_LABELS_FILE = "teacher_labeled.jsonl"
VOCABULARY_MISMATCH = ("distill.student: token-level distillation compares the teacher's and the student's "
                       "distributions over one vocabulary, but {detail}. Use a student with the teacher's "
                       "tokenizer: student.from_teacher, or student.from_config (which takes the teacher's "
                       "tokenizer unless tokenizer.name_or_path is set).")


@dataclass
class FromTeacherSpec:
    """Build the student from the teacher: its embeddings, heads and a subset of its layers (DistilBERT-style)."""

    keep_layers: list[int] | None = opt("The teacher layers (0-based) the student keeps, e.g. [0, 2, 4].",
                                        default=None)
    every: int | None = opt("Keep every k-th teacher layer: layers 0, k, 2k, ... (every: 2 halves the depth).",
                            default=None)

    def validate(self) -> list[ConfigIssue]:
        if (self.keep_layers is None) == (self.every is None):
            return [ConfigIssue("keep_layers", "give exactly one of keep_layers (a list of layer indices) or every "
                                               "(keep every k-th layer).")]
        return []


@dataclass
class StudentConfig(ModelConfig):
    """The student: a model path, a new model (from_config), or a copy of part of the teacher (from_teacher)."""

    option_prefix = "distill.student."
    other_sources = " (or distill.student.from_teacher)"
    from_teacher: FromTeacherSpec | None = opt("Build the student from the teacher's layers (keep_layers or every).",
                                               default=None)

    def validate(self) -> list[ConfigIssue]:
        if self.from_teacher is None:
            return super().validate()
        if self.name_or_path or self.from_config or self.gguf_file:
            return [ConfigIssue("from_teacher", "give one of student.name_or_path, student.from_config or "
                                                "student.from_teacher, not several.")]
        return []


def _default_student() -> StudentConfig:
    return StudentConfig(from_teacher=FromTeacherSpec(every=2))


@dataclass
class DistillSection:
    """The teacher, the student and the loss: alpha * CE + (1 - alpha) * tau^2 * KL + beta * feature loss."""

    teacher: str = opt("The teacher: an llmkit run directory (full or adapter run) or a model path / hub id.")
    teacher_trust_remote_code: bool = opt("Let the teacher's model repository run its own Python code on this "
                                          "machine (as model.trust_remote_code; off by default).", default=False)
    teacher_allow_pickle: bool = opt("Also load teacher weights stored as torch pickles (pytorch_model.bin, ...), "
                                     "which can run arbitrary code when loaded (as model.allow_pickle; off by "
                                     "default).", default=False)
    student: StudentConfig = opt("The student: name_or_path, from_config (uses the teacher's tokenizer unless "
                                 "tokenizer.name_or_path is set), or from_teacher: {keep_layers: [0, 2, 4]} / "
                                 "{every: 2}. Default: every 2nd teacher layer.", default_factory=_default_student)
    alpha: float = opt("Weight of the hard-label cross-entropy; 1 - alpha weighs the soft-label KL.", default=0.5)
    temperature: float = opt("Softmax temperature tau of the soft labels (> 0; the KL term is scaled by tau^2).",
                             default=2.0)
    beta: float = opt("Weight of the hidden-state (feature) loss; 0 turns it off.", default=0.0)
    layer_map: dict[int, int] | None = opt(
        "Student layer -> teacher layer (0-based block indices) for the feature loss, e.g. {0: 1, 1: 3, 2: 5}. "
        "Default: uniform (the last student layer meets the last teacher layer). A learned linear projection maps "
        "the student's width to the teacher's when they differ.", default=None)
    cache_teacher: bool = opt("Run the teacher once over the training data and keep its outputs on disk "
                              "($LLMKIT_CACHE/teacher): later epochs and reruns do not run it again.", default=False)
    cache_limit_gb: float = opt("Refuse a teacher cache larger than this (token-level logits of causal LMs grow "
                                "with tokens x vocabulary).", default=4.0)
    unlabeled: str | None = opt("A file of extra texts (txt: one per line; csv/tsv/json/jsonl: a text column) the "
                                "teacher labels; the student trains on them too. Written to "
                                f"OUTPUT_DIR/{TEACHER_LABELS_FILE}.", default=None)
    unlabeled_text_column: str | None = opt("The text column of the unlabeled file (default: data.text_column; "
                                            "txt files: text).", default=None)
    unlabeled_targets: Literal["soft", "hard"] = opt(
        "soft: the student learns the teacher's distribution on them (KL only); hard: the teacher's top class "
        "becomes their label (cross-entropy and KL, like labelled data).", default="soft")
    unlabeled_min_confidence: float | None = opt("Keep only texts whose teacher top-class probability is at least "
                                                 "this (0-1).", default=None)
    unlabeled_max_samples: int | None = opt("Use at most this many unlabeled texts (the first ones, after "
                                            "dropping texts that are already in the training data).", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = _teacher_issues(self.teacher)
        if not 0 <= self.alpha <= 1:
            issues.append(ConfigIssue("alpha", f"must be between 0 and 1 (the weight of the hard-label loss), got "
                                               f"{self.alpha}."))
        if self.temperature <= 0:
            issues.append(ConfigIssue("temperature", f"must be > 0, got {self.temperature}; 1 is the plain softmax, "
                                                     "2-4 are usual for distillation."))
        if self.beta < 0:
            issues.append(ConfigIssue("beta", f"must be >= 0, got {self.beta}."))
        if self.layer_map is not None and self.beta == 0:
            issues.append(ConfigIssue("layer_map", "only used by the feature loss; set distill.beta > 0 or remove "
                                                   "layer_map."))
        if self.layer_map is not None and not self.layer_map and self.beta > 0:
            issues.append(ConfigIssue("layer_map", f"is empty, but distill.beta={self.beta:g} turns the feature loss "
                                                   "on, which needs at least one student layer: teacher layer pair. "
                                                   "Remove layer_map (the default maps the layers uniformly), give "
                                                   "pairs such as {0: 1, 1: 3}, or set beta: 0."))
        for s, t in (self.layer_map or {}).items():
            if s < 0 or t < 0:
                issues.append(ConfigIssue("layer_map", f"layer indices are 0-based and >= 0, got {s}: {t}."))
        if self.cache_limit_gb <= 0:
            issues.append(ConfigIssue("cache_limit_gb", f"must be > 0, got {self.cache_limit_gb}."))
        issues += self._unlabeled_issues()
        return issues

    def _unlabeled_issues(self) -> list[ConfigIssue]:
        issues = []
        if self.unlabeled is None:
            for key, default in (("unlabeled_text_column", None), ("unlabeled_targets", "soft"),
                                 ("unlabeled_min_confidence", None), ("unlabeled_max_samples", None)):
                if getattr(self, key) != default:
                    issues.append(ConfigIssue(key, "only applies with distill.unlabeled (a file of extra texts)."))
            return issues
        if not Path(self.unlabeled).expanduser().exists():
            issues.append(ConfigIssue("unlabeled", f"file not found: {self.unlabeled} (from {Path.cwd()}). Check the "
                                                   "path, or remove distill.unlabeled to train on the labelled data "
                                                   "only."))
        confidence = self.unlabeled_min_confidence
        if confidence is not None and not 0 <= confidence <= 1:
            issues.append(ConfigIssue("unlabeled_min_confidence", f"must be between 0 and 1, got {confidence}."))
        if self.unlabeled_max_samples is not None and self.unlabeled_max_samples < 1:
            issues.append(ConfigIssue("unlabeled_max_samples", f"must be >= 1, got {self.unlabeled_max_samples}."))
        if self.unlabeled_targets == "soft" and self.alpha == 1:
            issues.append(ConfigIssue("unlabeled_targets", "soft targets train through the KL term, which alpha: 1 "
                                                           "switches off; lower alpha or use hard targets."))
        return issues


def _teacher_issues(teacher: str) -> list[ConfigIssue]:
    try:
        resolve_teacher(teacher)
    except UserError as e:
        return [ConfigIssue("teacher", str(e).removeprefix("distill.teacher: "))]
    return []


def resolve_teacher(reference: str) -> str:
    """The teacher's model (or adapter) folder: a run directory's model/ or adapter/, or a model path / hub id."""
    run = find_run_directory(reference, key="distill.teacher")
    if run is not None:
        return str(run.model_dir)
    issues = check_model_path("distill.teacher", reference)
    if issues:
        raise UserError(f"distill.teacher: {issues[0].message}")
    try:
        return resolve_model_path(reference)
    except ModelNotFound as e:
        raise UserError(f"distill.teacher: {e}") from None


@dataclass
class DistillConfig:
    """`llmkit distill` config."""

    section_hints = {"model": "a distillation's models are distill.teacher and distill.student"}

    distill: DistillSection = opt("Teacher, student and the distillation loss.")
    data: DataConfig = opt("The training data (labelled, as for finetune).")
    task: TaskConfig = opt("The task: sequence-classification or causal-lm.", default_factory=TaskConfig)
    tokenizer: TokenizerConfig = opt("The student's tokenizer (default: the student's, or the teacher's for "
                                     "from_teacher / from_config students).", default_factory=TokenizerConfig)
    train: TrainConfig = opt("Training settings: any HF TrainingArguments field plus precision and resume.",
                             default_factory=TrainConfig)
    output_dir: str | None = opt("Run directory (default: runs/distill-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = (self.data.require_training_data() + self.tokenizer.refuse_training(COMMAND)
                  + self.data.label_separator_issues(self.task.type, False, command=COMMAND))
        if self.task.type == "token-classification":
            issues.append(ConfigIssue("task.type", "llmkit distill supports sequence-classification and causal-lm; "
                                                   "distil a token classifier by training the student with llmkit "
                                                   "finetune on teacher-tagged data."))
        if self.task.type in ("preference", "reward-model"):
            issues.append(ConfigIssue("task.type", f"llmkit distill supports sequence-classification and causal-lm, "
                                                   f"not {self.task.type}; train it with llmkit finetune or adapter."))
        if self.task.multi_label:
            issues.append(ConfigIssue("task.multi_label", "distillation uses softmax distributions over the classes; "
                                                          "multi-label (sigmoid) classifiers are not supported."))
        for key, default in (("sample_prompts", []), ("sample_max_new_tokens", 64)):
            if getattr(self.task, key) != default:  # finetune's samples.jsonl; distill writes none
                issues.append(ConfigIssue(f"task.{key}", "llmkit distill writes no sample generations; remove it "
                                                         "and generate from the student's model/ with llmkit eval "
                                                         "(eval.task: generation)."))
        if self.task.type == "causal-lm" and self.distill.unlabeled is not None:
            issues.append(ConfigIssue("distill.unlabeled", "teacher-labelled texts apply to sequence-classification; "
                                                           "for causal-lm add the texts to data.train_file (every "
                                                           "token is distilled from the teacher)."))
        return issues


# ---------------------------------------------------------------- the recipe


# ---------------------------------------------------------------- smoke mode


def teacher_layers_needed(d: Any) -> int:
    """Teacher layers a distill section needs: its keep_layers, the student layers `every` makes for its layer
    map, and the layer map's teacher layers (a real teacher with fewer fails as it would in the real run)."""
    spec = d.student.from_teacher if d.student is not None else None
    keep = getattr(spec, "keep_layers", None)
    every = getattr(spec, "every", None)
    need = 2
    if keep:
        need = max(need, max(keep) + 1)
    if d.beta > 0 and d.layer_map:
        need = max(need, max(d.layer_map.values()) + 1)
        if every:
            need = max(need, max(d.layer_map) * every + 1)
    return need


def smoke_adjust(cfg: DistillConfig, shrink: Shrink) -> None:
    """Smoke mode: the teacher shrunk, keeping the layers the student and the layer map need; the student built
    from it as configured, or shrunk itself; a few unlabeled texts; short sample generations."""
    d = cfg.distill
    d.teacher = shrink.reference(d.teacher, "distill.teacher", teacher_layers_needed(d),
                                 trust_remote_code=d.teacher_trust_remote_code)
    if d.student.from_teacher is None:
        shrink.model_section(d.student, "distill.student.", None)
    if d.unlabeled is not None:
        shrink.note(f"{cap(d, 'unlabeled_max_samples', EXTRA_TEXTS)} unlabeled texts")


def smoke_references(raw: dict) -> list[tuple[str, str, int | None]]:
    """The teacher (with the layers kept of it), the student's own model, the tokenizer: what may name another
    config's run, read from the config as plain YAML."""
    from types import SimpleNamespace

    found = model_references(raw, ("distill.teacher", "distill.student.name_or_path", "tokenizer.name_or_path"))
    d = raw.get("distill") or {}
    student = d.get("student") or {"from_teacher": {"every": 2}}
    spec = student.get("from_teacher")
    section = SimpleNamespace(
        student=SimpleNamespace(from_teacher=SimpleNamespace(keep_layers=spec.get("keep_layers"),
                                                             every=spec.get("every")) if spec else None),
        beta=float(d.get("beta") or 0), layer_map={int(k): int(v) for k, v in (d.get("layer_map") or {}).items()})
    return [(key, value, teacher_layers_needed(section) if key == "distill.teacher" else None)
            for key, value, _ in found]


SMOKE = SmokeSpec(model_sections=(), adjust=smoke_adjust, references=smoke_references)


@honoured(COMMAND, SMOKE)
def run(cfg: DistillConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Distil the teacher into the student; return the final metrics (also in OUTPUT_DIR/metrics.json)."""
    from llmkit.training.distill import INDEX_COLUMN, DistillTrainer, IndexedCollator
    from llmkit.training.lifecycle import RunLifecycle

    d = cfg.distill
    task = TASKS[cfg.task.type](cfg)
    run = RunLifecycle(cfg, COMMAND, config_path=config_path, overwrite=overwrite)
    models = load_teacher(cfg, task)
    labels = teacher_labels(models.teacher, cfg.data) if cfg.task.type != "causal-lm" else []
    with run.state.main_process_first():  # the main process tokenizes and caches; the others read its cache
        data = prepare_data(cfg, task, models.tokenizer, labels)
    run.print(f"data: {describe_splits(data.stats)}; {task.describe(data)}; "
              f"{'from cache' if data.from_cache else 'prepared'} in {data.seconds:.1f} s")
    texts = unlabeled_texts(cfg) if d.unlabeled is not None else None  # checked before the student is built
    overrides = {} if "validation" in data.splits else {"eval_strategy": "no", "load_best_model_at_end": False}
    args = run.arguments(**overrides, **task.training_overrides)
    student, settings, sizes = build_distillation(cfg, task, models, labels, run)
    with run.state.main_process_first():  # a teacher with its own tokenizer may tokenize the texts (cached)
        check_lengths(cfg, models, student, settings, data, labels, texts)
    metrics_fn = task.metrics(labels)
    check_best_metric(cfg.train, task.metric_names(metrics_fn))
    if dry_run:
        return dry_run_plan(cfg, run, args, models, student, settings, sizes, data, labels)

    run_dir = run.claim()
    train_split, extra = data.splits["train"], None
    if texts is not None:
        extra = label_unlabeled(cfg, texts, models.teacher, models.teacher_tokenizer, models.tokenizer, labels,
                                run.precision, args, run_dir)
        train_split = extra.merged(train_split)
    train_split = train_split.add_column(INDEX_COLUMN, list(range(len(train_split))))
    run.plan(args, len(train_split), ", teacher outputs cached" if d.cache_teacher and settings.needs_teacher else "")
    student_memory(cfg, run, student, models.teacher, args, data)
    if settings.needs_teacher and d.cache_teacher:
        settings.cache = teacher_cache(cfg, models, train_split, labels, settings.layer_pairs, run.precision, args,
                                       extra)
    eval_collate = task.collator(models.tokenizer, run.pad_multiple(args))  # first: SFT counts its training padding
    result = run.train(
        args=args, model=student, tokenizer=models.tokenizer, train_dataset=train_split,
        eval_dataset=data.splits.get("validation"), compute_metrics=metrics_fn,
        data_collator=IndexedCollator(task.collator(models.tokenizer, run.pad_multiple(args))),
        preprocess_logits_for_metrics=metrics_fn.preprocess_logits_for_metrics if metrics_fn else None,
        trainer_cls=DistillTrainer, teacher=models.teacher, settings=settings)
    metrics = result.metrics
    metrics.update(sizes, student_teacher_param_ratio=round(sizes["student_params"] / sizes["teacher_params"], 4))
    sections = []
    if "validation" in data.splits:
        student_view = (data.splits["validation"], eval_collate)
        sections += compare_on_eval(task, result.trainer, models, student_view,
                                    teacher_eval_view(cfg, task, models, labels, student_view, run.pad_multiple(args)),
                                    metrics_fn, metrics, run_dir, run.precision, args)
    if extra is not None:
        metrics.update(extra.counts)
        sections.append(("Teacher-labelled data", extra.describe()))
    return result.finish(metrics, sections, summary=run_summary(cfg, models.teacher, student, settings, sizes, labels,
                                                                  data),
                         headline=[k for k in HEADLINE if k in metrics])


def dry_run_plan(cfg: DistillConfig, run: Any, args: Any, models: Any, student: Any, settings: Any, sizes: dict,
                 data: Any, labels: list[str]) -> dict:
    """--dry-run: the plan, the memory estimate and rendered examples; nothing written."""
    steps = run.plan(args, len(data.splits["train"]),
                     " (before teacher-labelled texts)" if cfg.distill.unlabeled else "")
    student_memory(cfg, run, student, models.teacher, args, data)
    run.preview(preview_splits(models.tokenizer, data.splits, KINDS[cfg.task.type], label_names=labels))
    return {"dry_run": True, "train_steps": steps, "teacher_params": sizes["teacher_params"],
            "student_params": sizes["student_params"], "data": data.stats, "label_names": labels,
            "layer_pairs": settings.layer_pairs}


HEADLINE = ("eval_accuracy", "teacher_eval_accuracy", "accuracy_retention", "eval_perplexity",
            "teacher_eval_perplexity", "inference_speedup")


@dataclass
class TeacherAndTokenizers:
    """The frozen teacher, its tokenizer, and the student's tokenizer (the teacher's unless the config gives one)."""

    teacher: Any
    teacher_tokenizer: Any
    tokenizer: Any
    same_vocab: bool
    _teacher_data: Any = dataclasses.field(default=None, repr=False)

    def teacher_data(self, cfg: DistillConfig, labels: list[str]) -> Any:
        """The data tokenized the teacher's way (its tokenizer differs from the student's): prepared once, read by
        the length check, the teacher's cache and its evaluation."""
        if self._teacher_data is None:
            self._teacher_data = prepare_classification_data(cfg.data, self.teacher_tokenizer, False, cfg.train.seed,
                                                             label_names=labels)
        return self._teacher_data


def load_teacher(cfg: DistillConfig, task: Any) -> TeacherAndTokenizers:
    d = cfg.distill
    teacher_cfg = ModelConfig(name_or_path=resolve_teacher(d.teacher), trust_remote_code=d.teacher_trust_remote_code,
                              allow_pickle=d.teacher_allow_pickle)
    teacher_cfg.option_prefix = "distill.teacher_"  # messages name distill.teacher_allow_pickle
    teacher_tokenizer = load_tokenizer(teacher_cfg, TokenizerConfig())
    check_teacher_kind(cfg, teacher_cfg)
    teacher, missing = load_model(task.auto_class, teacher_cfg, teacher_tokenizer)
    if missing:  # a head (or more) the teacher's files lack: random weights would teach random outputs
        raise UserError(f"distill.teacher: {d.teacher} has no trained {cfg.task.type} head for distillation "
                        f"(newly initialised: {', '.join(sorted(missing)[:3])}"
                        f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}), so it would teach "
                        f"random outputs. {TEACHER_FIX[cfg.task.type]}")
    teacher = teacher.eval().requires_grad_(False)
    own_tokenizer = bool(cfg.tokenizer.name_or_path or d.student.name_or_path)
    tokenizer = load_tokenizer(d.student if own_tokenizer else teacher_cfg, cfg.tokenizer)
    same_vocab = tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
    if cfg.task.type == "causal-lm" and not same_vocab:
        raise UserError(VOCABULARY_MISMATCH.format(detail="the student's tokenizer differs from the teacher's"))
    return TeacherAndTokenizers(teacher, teacher_tokenizer, tokenizer, same_vocab)


TEACHER_FIX = {
    "sequence-classification": "Fine-tune the teacher first (llmkit finetune with task.type: "
                               "sequence-classification) and give that run as distill.teacher.",
    "causal-lm": "Give a causal language model (or an llmkit finetune run of one, task.type: causal-lm) as "
                 "distill.teacher.",
}


def check_teacher_kind(cfg: DistillConfig, teacher_cfg: ModelConfig) -> None:
    """Refuse a teacher made for another task (a masked LM, a token classifier, ...), from its saved architecture
    as llmkit compress and eval read it: loaded for this task it would get a new, random head."""
    try:
        kind = model_kind(teacher_cfg)
    except UserError:  # an unreadable config: loading the teacher names it under distill.teacher's keys
        return
    if kind != cfg.task.type:
        raise UserError(f"distill.teacher: {cfg.distill.teacher} is a {kind} model, but task.type is "
                        f"{cfg.task.type}: loaded as a {cfg.task.type} teacher it would get a newly initialised, "
                        f"untrained head and teach random outputs. {TEACHER_FIX[cfg.task.type]}")


def check_lengths(cfg: DistillConfig, models: TeacherAndTokenizers, student: Any, settings: Any, data: Any,
                  labels: list[str], texts: list[str] | None) -> None:
    """Refuse examples longer than the student's or the teacher's positions (data.max_length above them) before
    anything is written: a tensor size error mid-run otherwise. The teacher reads the student's tokens (with the
    same vocabulary), else the texts tokenized its own way."""

    def unlabeled(tokenizer) -> dict:  # the teacher-labelled texts, truncated as training tokenizes them
        if not texts:
            return {}
        encoded = tokenizer(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]
        return {"distill.unlabeled": {"max_tokens": max(len(ids) for ids in encoded)}}

    student_stats = {**data.stats, **unlabeled(models.tokenizer)}
    if models.same_vocab:
        teacher_stats = student_stats
    else:
        own = models.teacher_data(cfg, labels)  # as teacher_view / teacher_eval_view read them
        # the training texts only when the teacher reads them
        teacher_stats = {split: s for split, s in own.stats.items() if split != "train" or settings.needs_teacher}
        teacher_stats.update(unlabeled(models.teacher_tokenizer))
    for key, model, stats in (("distill.teacher", models.teacher, teacher_stats),
                              ("distill.student", student, student_stats)):
        try:
            check_sequence_length(model, stats)
        except UserError:
            limit = model.config.max_position_embeddings
            split, longest = max(((k, v["max_tokens"]) for k, v in stats.items()), key=lambda kv: kv[1])
            name = cfg.distill.teacher if key == "distill.teacher" else describe_student(cfg.distill.student, student)
            where = split if split == "distill.unlabeled" else f"the {split} split"
            raise UserError(f"data.max_length: {cfg.data.max_length} keeps up to {longest} tokens of an example "
                            f"({where}), but {key} ({name}) has only {limit} positions; set "
                            f"data.max_length={limit} (or lower).") from None


def build_distillation(cfg: DistillConfig, task: Any, models: TeacherAndTokenizers, labels: list[str],
                       run: Any) -> tuple[Any, Any, dict]:
    """The student (with projections for hidden-state matching), the loss settings and the sizes; printed."""
    from transformers import set_seed

    from llmkit.training.distill import DistillSettings, add_projections

    d, teacher = cfg.distill, models.teacher
    if d.student.name_or_path:
        refuse_adapter_model(d.student, COMMAND)
    set_seed(cfg.train.seed)  # the student starts from the same random state as `llmkit finetune` would
    student = build_student(d.student, teacher, task, models.tokenizer, labels)
    check_vocabulary_fits(student, models.tokenizer)  # a from_teacher student keeps the teacher's embedding table
    freeze(student, d.student.freeze_embeddings, d.student.freeze_layers)
    check_pairing(cfg, teacher, student, models.same_vocab)
    pairs = layer_pairs(d, teacher, student) if d.beta > 0 else []
    projections = add_projections(student, pairs, hidden_size(student), hidden_size(teacher))
    settings = DistillSettings(alpha=d.alpha, temperature=d.temperature, beta=d.beta,
                               causal_lm=cfg.task.type == "causal-lm", layer_pairs=pairs)
    sizes = {"teacher_params": count_parameters(teacher)[1],
             "student_params": count_parameters(student)[1] - projections,
             "trainable_params": count_parameters(student)[0]}
    share = 100 * sizes["student_params"] / sizes["teacher_params"]
    run.print(f"teacher: {type(teacher).__name__}, {num_layers(teacher)} layers, {sizes['teacher_params'] / 1e6:.2f} M "
              f"parameters ({d.teacher})\nstudent: {describe_student(d.student, student)}, {num_layers(student)} "
              f"layers, {sizes['student_params'] / 1e6:.2f} M parameters ({share:.1f} % of the teacher), "
              f"{sizes['trainable_params'] / 1e6:.2f} M trainable"
              f"{f' incl. {projections} in projections' if projections else ''}")
    run.print(f"loss: {describe_loss(settings)}")
    if settings.needs_teacher and not d.cache_teacher and not models.same_vocab:
        raise UserError("distill.cache_teacher: the student's tokenizer differs from the teacher's, so the "
                        "teacher cannot read the student's batches; set distill.cache_teacher: true (the "
                        "teacher then labels the texts with its own tokenizer, once).")
    return student, settings, sizes


def run_summary(cfg: DistillConfig, teacher: Any, student: Any, settings: Any, sizes: dict, labels: list[str],
                data: Any) -> dict:
    return {
        "teacher": f"{cfg.distill.teacher} ({num_layers(teacher)} layers, {sizes['teacher_params'] / 1e6:.2f} M "
                   "parameters)",
        "student": f"{describe_student(cfg.distill.student, student)} ({num_layers(student)} layers, "
                   f"{sizes['student_params'] / 1e6:.2f} M parameters)",
        "loss": describe_loss(settings),
        "task": cfg.task.type,
        **({"classes": ", ".join(labels)} if labels else {}),
        "data": describe_splits(data.stats),
    }


# ---------------------------------------------------------------- pieces of the recipe


def teacher_labels(teacher, data_cfg: DataConfig) -> list[str]:
    """The teacher's classes (its id2label); data.label_names, when given, must be the same list."""
    config = teacher.config
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    if data_cfg.label_names and [str(n) for n in data_cfg.label_names] != names:
        raise UserError(f"data.label_names: {', '.join(map(str, data_cfg.label_names))} differs from the teacher's "
                        f"classes {', '.join(names)} (in that order). Distillation matches the student's class i to "
                        "the teacher's; use the teacher's names, or drop data.label_names to take them from the "
                        "teacher.")
    return names


def student_memory(cfg: DistillConfig, run: Any, student: Any, teacher: Any, args: Any, data: Any) -> Any:
    """The memory estimate of training the student beside the frozen teacher (training/memory.py)."""
    return run.memory(student, args, data.stats["train"]["max_tokens"], logits=cfg.task.type == "causal-lm",
                      frozen=(teacher,), packed=packed_rows(cfg))


def prepare_data(cfg: DistillConfig, task, tokenizer, labels: list[str]):
    """Tokenized splits: classification data labelled with the teacher's class list; SFT data as finetune."""
    if cfg.task.type == "causal-lm":
        return task.prepare(tokenizer, cfg.train.seed)

    return prepare_classification_data(cfg.data, tokenizer, False, cfg.train.seed, label_names=labels)


def build_student(spec: StudentConfig, teacher, task, tokenizer, labels: list[str]):
    """The student model: part of the teacher (from_teacher), a pretrained model, or a new one (from_config)."""
    if spec.from_teacher is None:
        return load_model(task.auto_class, spec, tokenizer, **task.model_kwargs(labels))[0]

    base = mergeable_base(teacher)
    keep = select_layers(num_layers(base), spec.from_teacher.keep_layers, spec.from_teacher.every)
    return student_from_teacher(base, keep)


def mergeable_base(teacher):
    """The teacher as a plain transformers model: LoRA-family adapters merged into a copy; bottleneck refused."""
    import copy

    from llmkit.models.bottleneck import has_bottleneck

    if has_bottleneck(teacher):
        raise UserError("distill.student.from_teacher: the teacher carries bottleneck adapters (extra layers "
                        "hooked into each block), so its layers cannot be copied into a student; give the student "
                        "as distill.student.name_or_path (e.g. the base model) or from_config.")
    if hasattr(teacher, "merge_and_unload"):  # a PEFT model: fold the adapter into a copy of the base
        return copy.deepcopy(teacher).merge_and_unload()
    return teacher


def num_layers(model) -> int:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def hidden_size(model) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or config.n_embd


def check_pairing(cfg: DistillConfig, teacher, student, same_vocab: bool) -> None:
    """Refuse teacher/student pairs whose outputs cannot be compared."""
    d = cfg.distill
    if cfg.task.type == "causal-lm":
        t_size = teacher.get_output_embeddings().weight.shape[0]
        s_size = student.get_output_embeddings().weight.shape[0]
        if t_size != s_size:
            raise UserError(VOCABULARY_MISMATCH.format(
                detail=f"the student's output layer has {s_size} outputs, the teacher's {t_size}"))
    else:
        t_labels, s_labels = teacher.config.num_labels, student.config.num_labels
        if t_labels != s_labels:
            raise UserError(f"distill.student: the student has {s_labels} classes but the teacher {t_labels}.")
    if d.beta > 0 and not same_vocab:
        raise UserError("distill.beta: the feature loss compares hidden states position by position, which needs "
                        "the teacher's tokenizer for the student; set beta: 0 or use the teacher's tokenizer.")


def layer_pairs(d: DistillSection, teacher, student) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs for the feature loss: distill.layer_map, else the uniform map."""
    from llmkit.training.distill import uniform_layer_map

    s_layers, t_layers = num_layers(student), num_layers(teacher)
    if d.layer_map is None:
        return uniform_layer_map(s_layers, t_layers)
    for s, t in d.layer_map.items():
        if s >= s_layers:
            raise UserError(f"distill.layer_map: student layer {s} does not exist; the student has {s_layers} "
                            f"layers (0-{s_layers - 1}).")
        if t >= t_layers:
            raise UserError(f"distill.layer_map: teacher layer {t} (for student layer {s}) does not exist; the "
                            f"teacher has {t_layers} layers (0-{t_layers - 1}).")
    return sorted(d.layer_map.items())


def describe_student(spec: StudentConfig, student) -> str:
    if spec.from_teacher is not None:
        how = (f"layers {spec.from_teacher.keep_layers}" if spec.from_teacher.keep_layers is not None
               else f"layers (every: {spec.from_teacher.every})")
        return f"{type(student).__name__} from the teacher's {how}"

    return f"{type(student).__name__} ({model_label(spec)})"


def describe_loss(s) -> str:
    parts = [f"{s.alpha:g} x CE(hard labels)"]
    if s.alpha < 1:
        parts.append(f"{1 - s.alpha:g} x tau^2 x KL(teacher || student), tau={s.temperature:g}")
    if s.beta > 0:
        parts.append(f"{s.beta:g} x feature loss over layers (student->teacher) "
                     f"{', '.join(f'{a}->{b}' for a, b in s.layer_pairs)}")
    return " + ".join(parts)


# ---------------------------------------------------------------- teacher outputs


def teacher_cache(cfg: DistillConfig, models: TeacherAndTokenizers, train_split, labels, pairs, precision: str,
                  args, extra):
    """The teacher's outputs for every training example, from the cache or computed once and stored."""
    from accelerate import PartialState

    from llmkit.training.distill import TeacherCache, build_teacher_cache, cache_size_bytes, data_digest

    d = cfg.distill
    causal_lm = cfg.task.type == "causal-lm"
    teacher, teacher_tokenizer = models.teacher, models.teacher_tokenizer
    teacher_split = train_split if models.same_vocab else teacher_view(cfg, models, labels, extra)
    layers = [t for _, t in pairs]
    num_outputs = teacher.get_output_embeddings().weight.shape[0] if causal_lm else teacher.config.num_labels
    size = cache_size_bytes(teacher_split, per_token_logits=causal_lm, num_outputs=num_outputs, layers=layers,
                            hidden_width=hidden_size(teacher))
    if size > d.cache_limit_gb * 1e9:
        raise UserError(f"distill.cache_teacher: the teacher's outputs for {len(teacher_split)} examples would take "
                        f"{size / 1e9:.1f} GB on disk (limit distill.cache_limit_gb={d.cache_limit_gb:g}). Raise "
                        "the limit, use fewer examples (data.max_train_samples), or set cache_teacher: false to run "
                        "the teacher beside the student instead.")
    key = cache_key({"teacher": file_digest(resolve_teacher(d.teacher)), "data": data_digest(teacher_split),
                     "layers": layers, "per_token_logits": causal_lm, "precision": precision})
    directory = cache_root(cfg.data.cache_dir).parent / "teacher" / key
    say = PartialState().print  # the launch's main process speaks (args set the state up)
    with args.main_process_first(desc="teacher outputs"):
        if (directory / "meta.json").is_file():
            say(f"teacher outputs: from cache {directory}")
            return TeacherCache(directory)
        say(f"teacher outputs: computing for {len(teacher_split)} examples ({size / 1e6:.0f} MB) ...")
        try:
            cache = build_teacher_cache(directory, teacher.to(args.device), teacher_split, teacher_tokenizer,
                                        batch_size=args.per_device_eval_batch_size, layers=layers,
                                        per_token_logits=causal_lm, num_outputs=num_outputs,
                                        hidden_width=hidden_size(teacher), precision=precision, device=args.device)
        except OSError as e:  # the cache location failed (not writable, full): name the setting that chose it
            raise cache_error(e, directory, cfg.data.cache_dir) from None
        say(f"teacher outputs: {cache.meta['seconds']:.1f} s, cached in {directory}")
        return cache


def teacher_view(cfg: DistillConfig, models: TeacherAndTokenizers, labels, extra):
    """The training examples tokenized the teacher's way, in the student's order (different tokenizers)."""
    split = models.teacher_data(cfg, labels).splits["train"]
    return extra.merged(split, models.teacher_tokenizer) if extra is not None else split


@dataclass
class TeacherLabelled:
    """Unlabelled texts with the teacher's labels, ready to be appended to the training split."""

    rows: list[dict]  # text, label (name), confidence, probabilities, kept
    targets: str
    label_names: list[str]
    path: Path | None
    max_length: int
    tokenizer: object

    @property
    def kept(self) -> list[dict]:
        return [r for r in self.rows if r["kept"]]

    @property
    def counts(self) -> dict:
        return {"unlabeled_texts": len(self.rows), "unlabeled_used": len(self.kept)}

    def merged(self, train_split, tokenizer=None):
        """The training split followed by the kept texts (hard: the teacher's class; soft: label -100)."""
        import datasets

        tokenizer = tokenizer or self.tokenizer
        ids = {name: i for i, name in enumerate(self.label_names)}
        texts = [r["text"] for r in self.kept]
        encoded = tokenizer(texts, truncation=True, max_length=self.max_length)
        columns = {k: encoded[k] for k in train_split.column_names if k in encoded}
        columns["labels"] = [ids[r["label"]] if self.targets == "hard" else -100 for r in self.kept]
        extra = datasets.Dataset.from_dict(columns, features=train_split.features)
        return datasets.concatenate_datasets([train_split, extra])

    def describe(self) -> str:
        from collections import Counter


        kept = Counter(r["label"] for r in self.kept)
        rows = [[name, kept.get(name, 0)] for name in self.label_names]
        where = f" Written to `{self.path.name}`." if self.path else ""
        return (f"{len(self.kept)} of {len(self.rows)} texts used as {self.targets} targets.{where}\n\n"
                + markdown_table(["teacher's class", "texts"], rows))


def label_unlabeled(cfg: DistillConfig, texts: list[str], teacher, teacher_tokenizer, tokenizer, labels, precision,
                    args, run_dir) -> TeacherLabelled:
    """Have the teacher label the unlabelled `texts` (cached on disk by teacher + texts), write them to the run."""
    import json
    import time

    import numpy as np
    from accelerate import PartialState

    from llmkit.training.distill import run_teacher

    d = cfg.distill
    key = cache_key({"teacher": file_digest(resolve_teacher(d.teacher)), "texts": texts,
                     "max_length": cfg.data.max_length, "precision": precision})
    cached = cache_root(cfg.data.cache_dir).parent / "teacher-labels" / f"{key}.jsonl"
    say = PartialState().print  # the launch's main process speaks (args set the state up)
    with args.main_process_first(desc="teacher labels"):
        if cached.is_file():
            probs = [json.loads(line) for line in cached.read_text().splitlines()]
            say(f"teacher labels: {len(probs)} texts from cache {cached}")
        else:
            import datasets

            encoded = datasets.Dataset.from_dict(dict(teacher_tokenizer(texts, truncation=True,
                                                                        max_length=cfg.data.max_length)))
            probs = [None] * len(texts)
            start = time.perf_counter()

            def write(index, logits, hidden):
                p = np.exp(logits[0] - logits[0].max())
                probs[index] = (p / p.sum()).round(6).tolist()

            run_teacher(teacher.to(args.device), encoded, teacher_tokenizer, batch_size=args.per_device_eval_batch_size,
                        layers=[], per_token_logits=False, precision=precision, device=args.device, write=write)
            tmp = cached.with_name(f"{cached.name}.tmp")
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text("".join(json.dumps(p) + "\n" for p in probs))
                tmp.replace(cached)
            except OSError as e:  # the cache location failed: name the setting that chose it
                raise cache_error(e, cached, cfg.data.cache_dir) from None
            say(f"teacher labels: {len(texts)} texts labelled in {time.perf_counter() - start:.1f} s, cached in "
                f"{cached}")
    threshold = d.unlabeled_min_confidence or 0.0
    rows = []
    for text, p in zip(texts, probs):
        best = int(np.argmax(p))
        rows.append({"text": text, "label": labels[best], "confidence": p[best],
                     "probabilities": dict(zip(labels, p)), "kept": p[best] >= threshold})
    path = None
    if run_dir is not None and args.process_index == 0:
        path = run_dir / TEACHER_LABELS_FILE
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    result = TeacherLabelled(rows=rows, targets=d.unlabeled_targets, label_names=labels, path=path,
                             max_length=cfg.data.max_length, tokenizer=tokenizer)
    say(f"teacher labels: {len(result.kept)} of {len(rows)} texts kept (min confidence {threshold:g}), "
        f"{d.unlabeled_targets} targets")
    return result


def unlabeled_texts(cfg: DistillConfig) -> list[str]:
    """The unlabelled texts: non-empty, deduplicated, without texts already in the training data."""
    d = cfg.distill
    reader = dataclasses.replace(cfg.data, column_names=None, format="auto", max_train_samples=None)
    raw = load_file_split("distill.unlabeled", str(Path(d.unlabeled).expanduser()), reader)
    column = d.unlabeled_text_column or ("text" if "text" in raw.column_names and len(raw.column_names) == 1
                                         else cfg.data.text_column)
    if column not in raw.column_names:
        raise UserError(f"distill.unlabeled_text_column: {column!r} is not a column of {d.unlabeled}; its columns "
                        f"are: {', '.join(raw.column_names)}. Set distill.unlabeled_text_column to one of them.")
    seen = {str(t).strip() for t in load_raw_splits(cfg.data, cfg.train.seed)["train"][cfg.data.text_column]}
    texts = []
    for value in raw[column]:
        text = str(value).strip() if value is not None else ""
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
            if d.unlabeled_max_samples and len(texts) >= d.unlabeled_max_samples:
                break
    if not texts:
        raise UserError(f"distill.unlabeled: {d.unlabeled} holds no text that is not already in the training data.")
    return texts


# ---------------------------------------------------------------- teacher vs student


def teacher_eval_view(cfg: DistillConfig, task, models: TeacherAndTokenizers, labels, student_view: tuple,
                      pad_multiple: int | None) -> tuple:
    """The validation rows and collator the teacher reads: the student's when they share the vocabulary, else
    the same texts tokenized the teacher's way (its ids differ; a classifier student only: causal LMs share)."""
    if models.same_vocab:
        return student_view
    return models.teacher_data(cfg, labels).splits["validation"], task.collator(models.teacher_tokenizer, pad_multiple)


def compare_on_eval(task, trainer, models: TeacherAndTokenizers, student_view: tuple, teacher_view: tuple,
                    metrics_fn, metrics: dict, run_dir, precision: str, args) -> list[tuple[str, str]]:
    """Evaluate the student and the teacher on the validation set, each as it reads it ((split, collator)), and
    time both; add the figures to metrics."""
    from llmkit.training.distill import inference_speed

    teacher = models.teacher
    out = trainer.predict(student_view[0], metric_key_prefix="eval")
    metrics.update(without_timings(out.metrics))
    sections = task.report("validation", metrics_fn, out, "eval", metrics,
                           run_dir if trainer.is_world_process_zero() else None)
    metrics.update(evaluate_teacher(task, teacher, models.teacher_tokenizer, *teacher_view, metrics_fn, args))
    speeds = inference_speed({"teacher": (teacher, *teacher_view), "student": (trainer.model, *student_view)},
                             args.per_device_eval_batch_size, precision, args.device)
    metrics.update(teacher_examples_per_second=round(speeds["teacher"], 1),
                   student_examples_per_second=round(speeds["student"], 1),
                   inference_speedup=round(speeds["student"] / speeds["teacher"], 3))
    key = "accuracy" if "eval_accuracy" in metrics else "perplexity" if "eval_perplexity" in metrics else "loss"
    student_value, teacher_value = metrics.get(f"eval_{key}"), metrics.get(f"teacher_eval_{key}")
    if key == "accuracy" and teacher_value:
        metrics["accuracy_retention"] = round(student_value / teacher_value, 4)
    rows = [[f"eval {key}", teacher_value, student_value],
            ["parameters", metrics["teacher_params"], metrics["student_params"]],
            ["layers", num_layers(teacher), num_layers(trainer.model)],
            ["examples/s (eval set)", metrics["teacher_examples_per_second"], metrics["student_examples_per_second"]]]
    return [("Teacher vs student", markdown_table(["", "teacher", "student"], rows))] + sections


def evaluate_teacher(task, teacher, tokenizer, eval_split, collate, metrics_fn, args) -> dict:
    """The teacher's metrics on the same validation set, computed the same way (teacher_eval_*)."""
    import math

    from llmkit.training.trainer import MeanLossTrainer

    evaluator = (task.trainer_cls or MeanLossTrainer)(
        model=teacher, args=args, eval_dataset=eval_split, processing_class=tokenizer, data_collator=collate,
        compute_metrics=metrics_fn,
        preprocess_logits_for_metrics=metrics_fn.preprocess_logits_for_metrics if metrics_fn else None)
    out = evaluator.predict(eval_split, metric_key_prefix="teacher_eval")
    result = without_timings(out.metrics)
    if metrics_fn is None and "teacher_eval_loss" in result:  # causal LM: perplexity, as for the student
        result["teacher_eval_perplexity"] = math.exp(min(result["teacher_eval_loss"], 50.0))
    return result


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second", "_preparation_time"))}
