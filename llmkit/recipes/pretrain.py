"""`llmkit pretrain`: causal (GPT-style) or masked (BERT-style) language-model pretraining, from scratch with a
tokenizer trained on the text, or continued from an existing model; optionally a size sweep with a scaling-law fit.

Reads top to bottom: tokenizer -> data -> model -> trainer -> train -> save -> metrics.

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.config.loader import save_config
from llmkit.config.sections import DataConfig, FromConfigSpec, ModelConfig, TokenizerConfig, TrainConfig, opt
from llmkit.data.pretraining import BlockCollator, LazySplits, MaskingSettings, prepare_pretrain_data
from llmkit.errors import ConfigIssue, UserError
from llmkit.metrics.tables import markdown_table
from llmkit.models.loading import (
    count_parameters,
    freeze,
    load_model,
    load_tokenizer,
    model_label,
    model_source,
    sentence_model_for,
)
from llmkit.models.quiet import quiet_transformers
from llmkit.models.tokenizer_training import cached_tokenizer
from llmkit.smoke import Shrink, SmokeSpec, honoured, shrink_sweep
from llmkit.training import arguments, rundir
from llmkit.training.arguments import check_best_metric
from llmkit.training.report import write_report
from llmkit.training.scaling import fit_power_law, non_embedding_parameters, plot_scaling

COMMAND = "pretrain"
ENCODER_FAMILIES = ("bert",)
SIZE_KEYS = [f.name for f in dataclasses.fields(FromConfigSpec) if f.name != "family"]
MLM_ONLY = {"mlm_probability": 0.15, "mask_replace_prob": 0.8, "random_replace_prob": 0.1, "whole_word_mask": False}
CONTRASTIVE_ONLY = {"temperature": 0.05, "pooling": "cls"}
BLOCKS_ONLY = {"block_size": 256, "max_tokens": None}  # the packed-block objectives' settings


@dataclass
class PretrainSection:
    """What to pretrain for and how the text becomes training blocks."""

    objective: Literal["clm", "mlm", "contrastive"] = opt(
        "clm: next-token prediction (GPT-style decoders); mlm: masked-token prediction (BERT-style encoders); "
        "contrastive: unsupervised SimCSE, sentence embeddings from the text alone: each sentence (a line of a txt "
        "file, or a row's data.text_column) passes twice through the encoder with dropout on, the two views are "
        "each other's positive and the batch's other sentences the negatives. Needs model.name_or_path (a "
        "pretrained model, or an llmkit run such as an mlm pretraining); the model is saved in the "
        "sentence-transformers format.", default="clm")
    block_size: int = opt("Tokens per training block; the text is concatenated and cut into blocks of this "
                          "length (no padding).", default=256)
    documents: Literal["line", "paragraph", "file"] = opt(
        "How plain-text files split into documents (each ends with EOS / SEP): one per line, per blank-line-"
        "separated paragraph, or one per file. Rows of csv/json/parquet data are documents.", default="line")
    mlm_probability: float = opt("mlm: share of tokens chosen for prediction.", default=0.15)
    mask_replace_prob: float = opt("mlm: share of the chosen tokens replaced by the mask token.", default=0.8)
    random_replace_prob: float = opt("mlm: share of the chosen tokens replaced by a random token (the rest stay "
                                     "unchanged).", default=0.1)
    whole_word_mask: bool = opt("mlm: choose whole words (all their tokens), keeping the mask/random/unchanged "
                                "split per token.", default=False)
    max_tokens: int | None = opt("Token budget: train for this many tokens (sets train.max_steps from the batch "
                                 "size and block_size).", default=None)
    temperature: float = opt("contrastive: the softmax temperature of the cosine similarities (SimCSE: 0.05).",
                             default=0.05)
    pooling: Literal["cls", "mean", "last-token"] = opt(
        "contrastive: cls (the [CLS] vector, with an MLP over it in training only, as SimCSE), mean (of the token "
        "vectors), or last-token (decoders).", default="cls")
    sweep: list[dict[str, Any]] = opt(
        "Model sizes to train on the same data and token budget, each a dict of model.from_config fields "
        "(num_layers, hidden_size, num_heads, intermediate_size, ...) overriding model.from_config, optionally with "
        "a name. Writes sweep.json and scaling.png with the fit L(N) = (N_c / N)^alpha.", default_factory=list)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        if self.block_size < 2:
            issues.append(ConfigIssue("block_size", f"must be >= 2, got {self.block_size}."))
        if self.objective != "mlm":
            issues += [ConfigIssue(k, f"only applies to objective: mlm, not {self.objective}.")
                       for k, default in MLM_ONLY.items() if getattr(self, k) != default]
        if self.objective != "contrastive":
            issues += [ConfigIssue(k, f"only applies to objective: contrastive, not {self.objective}.")
                       for k, default in CONTRASTIVE_ONLY.items() if getattr(self, k) != default]
        else:
            issues += [ConfigIssue(k, "only applies to the packed-block objectives clm and mlm; contrastive reads "
                                      "one sentence per row (data.max_length cuts it).")
                       for k, default in BLOCKS_ONLY.items() if getattr(self, k) != default]
            if self.sweep:
                issues.append(ConfigIssue("sweep", "a size sweep trains new models (model.from_config); contrastive "
                                                   "pretraining starts from a trained encoder."))
            if self.temperature <= 0:
                issues.append(ConfigIssue("temperature", f"must be > 0, got {self.temperature} (SimCSE: 0.05)."))
        for key in ("mlm_probability", "mask_replace_prob", "random_replace_prob"):
            if not 0 <= getattr(self, key) <= 1:
                issues.append(ConfigIssue(key, f"must be between 0 and 1, got {getattr(self, key)}."))
        if not 0 < self.mlm_probability:
            issues.append(ConfigIssue("mlm_probability", "must be above 0."))
        if self.mask_replace_prob + self.random_replace_prob > 1:
            issues.append(ConfigIssue("random_replace_prob", f"mask_replace_prob + random_replace_prob = "
                                      f"{self.mask_replace_prob + self.random_replace_prob} exceeds 1."))
        if self.max_tokens is not None and self.max_tokens < 1:
            issues.append(ConfigIssue("max_tokens", f"must be >= 1, got {self.max_tokens}."))
        issues += self._validate_sweep()
        return issues

    def _validate_sweep(self) -> list[ConfigIssue]:
        issues = []
        if len(self.sweep) == 1:
            issues.append(ConfigIssue("sweep", "give at least 2 sizes to fit a scaling law (or none)."))
        for i, size in enumerate(self.sweep):
            for key in size:
                if key not in (*SIZE_KEYS, "name"):
                    close = difflib.get_close_matches(key, SIZE_KEYS, n=1)
                    hint = f"did you mean {close[0]}? " if close else ""
                    issues.append(ConfigIssue(f"sweep.{i}.{key}", f"unknown size key; {hint}Sweep entries take: "
                                                                  f"{', '.join(SIZE_KEYS)}, name."))
        return issues


@dataclass
class PretrainConfig:
    """`llmkit pretrain` config."""

    model: ModelConfig = opt("The model: model.from_config for a new one, or name_or_path to continue pretraining.")
    data: DataConfig = opt("The text to pretrain on: txt files (see pretrain.documents), or csv/json/parquet with "
                           "data.text_column.")
    pretrain: PretrainSection = opt("Objective, block size, masking, token budget and size sweep.",
                                    default_factory=PretrainSection)
    tokenizer: TokenizerConfig = opt("The tokenizer: tokenizer.train to train one on the training text, else the "
                                     "model's (or tokenizer.name_or_path).", default_factory=TokenizerConfig)
    train: TrainConfig = opt("Training settings: any HF TrainingArguments field plus precision and resume.",
                             default_factory=TrainConfig)
    output_dir: str | None = opt("Run directory (default: runs/pretrain-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = self.data.require_training_data()
        spec = self.model.from_config
        objective = self.pretrain.objective
        if objective == "contrastive" and spec is not None:
            issues.append(ConfigIssue("model.from_config", "contrastive pretraining learns sentence embeddings from "
                                      "a trained encoder (random weights give nothing to contrast); set "
                                      "model.name_or_path, e.g. an llmkit mlm pretraining run."))
        elif spec is not None:
            encoder = spec.family in ENCODER_FAMILIES
            if objective == "mlm" and not encoder:
                issues.append(ConfigIssue("pretrain.objective", f"mlm needs an encoder (family bert), but "
                                          f"model.from_config.family is {spec.family}, a causal decoder; use "
                                          "objective: clm, or family: bert."))
            if objective == "clm" and encoder:
                issues.append(ConfigIssue("pretrain.objective", "clm needs a causal decoder (family gpt2 or llama), "
                                          "but model.from_config.family is bert, an encoder; use objective: mlm, "
                                          "or family: gpt2 / llama."))
            block, positions = self.pretrain.block_size, spec.max_position_embeddings
            if block > positions and not any("max_position_embeddings" in size for size in self.pretrain.sweep):
                issues.append(ConfigIssue("pretrain.block_size", f"{block} is larger than the model's {positions} "
                                          f"positions (model.from_config.max_position_embeddings); set "
                                          f"pretrain.block_size={positions} or lower, or raise the positions."))
            if self.tokenizer.train is None and self.tokenizer.name_or_path is None:
                issues.append(ConfigIssue("tokenizer", "model.from_config builds a new model without a tokenizer; "
                                          "set tokenizer.train (e.g. {type: bpe, vocab_size: 8000}) or "
                                          "tokenizer.name_or_path."))
        elif self.tokenizer.train is not None:
            issues.append(ConfigIssue("tokenizer.train", "a newly trained vocabulary does not fit the embeddings of "
                                      "an existing model; use it with model.from_config, or drop tokenizer.train "
                                      "to continue pretraining with the model's tokenizer."))
        if self.pretrain.sweep and spec is None:
            issues.append(ConfigIssue("pretrain.sweep", "a size sweep builds new models: set model.from_config "
                                      "(the sizes override its fields)."))
        if self.pretrain.max_tokens is not None and self.train.passthrough.get("max_steps", -1) > 0:
            issues.append(ConfigIssue("pretrain.max_tokens", "give either pretrain.max_tokens or train.max_steps, "
                                      "not both."))
        if objective == "contrastive" and (self.data.validation_file or self.data.validation_split):
            issues.append(ConfigIssue("data.validation_file", "contrastive pretraining has no validation loss worth "
                                      "reading (without dropout both views of a sentence are the same); remove it "
                                      "and score the run with llmkit eval RUN --data PAIRS eval.task=sts."))
        return issues


def check_objective(model_cfg: ModelConfig, objective: str) -> None:
    """An existing model must have the head the objective trains (checked on its config, before loading)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    with quiet_transformers():
        kind = AutoConfig.from_pretrained(model_source(model_cfg), trust_remote_code=model_cfg.trust_remote_code)
    model_type = kind.model_type
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if objective == "mlm" and not encoder:
        raise UserError(f"pretrain.objective: mlm needs a masked-LM (encoder) model, but {model_label(model_cfg)} is "
                        f"a {model_type} model, which has no masked-LM head; use objective: clm.")
    if objective == "clm" and (encoder or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise UserError(f"pretrain.objective: clm needs a causal decoder, but {model_label(model_cfg)} is a "
                        f"{model_type} model (an encoder); use objective: mlm.")


def check_model_fits(model: Any, tokenizer: Any, block_size: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and block_size > limit:
        raise UserError(f"pretrain.block_size: {block_size} is larger than the model's {limit} positions; set "
                        f"pretrain.block_size={limit} (or lower), or raise model.from_config.max_position_embeddings.")
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise UserError(f"tokenizer: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                        f"{vocab}; use the model's own tokenizer.")


def load_or_train_tokenizer(cfg: PretrainConfig, raw, resume_from: str | None):
    """The model's (or configured) tokenizer, or one trained on the training text (cached; on resume, the one
    saved in the checkpoint)."""
    spec = cfg.tokenizer.train
    if spec is None:
        return load_tokenizer(cfg.model, cfg.tokenizer), "loaded"
    if resume_from and (Path(resume_from) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resume_from), "from the checkpoint"

    if spec.max_length is None:
        spec = dataclasses.replace(spec, max_length=cfg.model.from_config.max_position_embeddings)
    tokenizer, hit = cached_tokenizer(spec, raw.train_texts(), cfg.pretrain.objective, raw.key_parts(),
                                      cfg.data.cache_dir)
    return tokenizer, f"trained ({spec.type}, {len(tokenizer)} tokens){', from cache' if hit else ''}"


def smoke_adjust(cfg: PretrainConfig, shrink: Shrink) -> None:
    """Smoke mode: every size of a sweep shrunk in order (from the real sizes), a token budget cut to the steps."""
    real = shrink.original.model.from_config
    if cfg.pretrain.sweep and real is not None:
        cfg.pretrain.sweep = shrink_sweep(real, cfg.pretrain.sweep)
        sizes = ", ".join(f"{s['num_layers']}x{s['hidden_size']}" for s in cfg.pretrain.sweep)
        shrink.note(f"pretrain.sweep sizes shrunk in order (layers x hidden: {sizes})")
    if cfg.pretrain.max_tokens:  # the token budget sets max_steps itself
        train = cfg.train
        per_step = train.per_device_train_batch_size * train.gradient_accumulation_steps * cfg.pretrain.block_size
        cfg.pretrain.max_tokens = min(cfg.pretrain.max_tokens, train.passthrough.pop("max_steps") * per_step)


SMOKE = SmokeSpec(adjust=smoke_adjust)


@honoured(COMMAND, SMOKE)
def run(cfg: PretrainConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Pretrain (or sweep sizes) and evaluate; return the final metrics (also in OUTPUT_DIR/metrics.json)."""
    from llmkit.training.lifecycle import RunLifecycle
    from llmkit.training.trainer import TokenLossTrainer

    p = cfg.pretrain
    run = RunLifecycle(cfg, COMMAND, config_path=config_path, overwrite=overwrite)
    if p.objective == "contrastive":
        return pretrain_contrastive(cfg, run, dry_run)
    state = run.state
    if cfg.model.from_config is None:
        check_objective(cfg.model, p.objective)
    check_best_metric(cfg.train, list(TokenLossTrainer.METRICS))
    resume_from = rundir.find_resume_checkpoint(run.path, cfg.train.resume) \
        if cfg.train.resume and run.path.is_dir() and not p.sweep else None
    raw = LazySplits(cfg.data, cfg.train.seed, {"file": "document"}.get(p.documents, p.documents))
    masking = MaskingSettings(p.mlm_probability, p.mask_replace_prob, p.random_replace_prob, p.whole_word_mask)
    with state.main_process_first():  # the main process trains the tokenizer and packs the blocks into the cache
        started = time.perf_counter()
        tokenizer, how = load_or_train_tokenizer(cfg, raw, resume_from)
        how += f" in {time.perf_counter() - started:.1f} s"
        data = prepare_pretrain_data(cfg.data, tokenizer, raw, p.objective, p.block_size, masking, cfg.train.seed)
    state.print(f"tokenizer: {how}; data: {describe_splits(data.stats)}; "
                f"{'from cache' if data.from_cache else 'prepared'} in {data.seconds:.1f} s")
    sizes = [dict(s) for s in p.sweep] or [{}]
    plan = Plan(cfg, data, tokenizer, masking, run)
    if dry_run:
        out = plan.dry_run(sizes)
        run.preview(block_preview(data, tokenizer, p.objective, masking))
        return out
    # The model is built before the run directory is touched: a model that cannot be built changes nothing.
    model = None if p.sweep else plan.build_model(cfg)
    run_dir = run.claim()
    if not p.sweep:
        return plan.train(cfg, run_dir, sweep_member=False, model=model)
    return run_sweep(plan, sizes, run_dir, state)


def pretrain_contrastive(cfg: PretrainConfig, run: Any, dry_run: bool) -> dict:
    """Unsupervised SimCSE (pretrain.objective: contrastive): every sentence twice through the encoder with dropout
    on, the two views each other's positive, the batch's other sentences the negatives; the model saved in the
    sentence-transformers format with the pooling it trained with (the MLP over [CLS] is for training only)."""
    from llmkit.data.pairs import prepare_pair_data
    from llmkit.data.preview import preview_splits
    from llmkit.models.embedding import require_sentence_transformers, save_sentence_model
    from llmkit.training.contrastive import (
        ContrastiveTrainer,
        PairCollator,
        SentenceEncoder,
        check_batch_for_negatives,
        make_loss,
        negatives_line,
    )

    require_sentence_transformers("pretrain.objective")
    p = cfg.pretrain
    source = encoder_source(cfg.model)
    tokenizer = load_tokenizer(dataclasses.replace(cfg.model, name_or_path=source, gguf_file=None), cfg.tokenizer)
    with run.state.main_process_first():  # the main process tokenizes and caches; the others read its cache
        data = prepare_pair_data(cfg.data, tokenizer, cfg.train.seed, scored=False, with_pairs=False)
    run.print(f"data: {len(data.splits['train'])} sentences / {data.stats['train']['tokens']} tokens; "
              f"{'from cache' if data.from_cache else 'prepared'} in {data.seconds:.1f} s")
    model = SentenceEncoder(sentence_model_for(cfg.model, source, p.pooling, cfg.data.max_length),
                            mlp_head=p.pooling == "cls")
    freeze(model, cfg.model.freeze_embeddings, cfg.model.freeze_layers)
    trainable, total = count_parameters(model)
    run.print(f"model: {model_label(cfg.model)} with {p.pooling} pooling"
              f"{' and an MLP over it in training' if p.pooling == 'cls' else ''}, {total / 1e6:.2f} M parameters"
              f"{frozen_note(trainable, total)}")
    args = run.arguments(remove_unused_columns=False, eval_strategy="no", load_best_model_at_end=False)
    check_batch_for_negatives(args.per_device_train_batch_size, args.world_size)
    run.print(negatives_line(args.per_device_train_batch_size, args.world_size, gathered=args.world_size > 1))
    steps = run.plan(args, len(data.splits["train"]))
    run.memory(model, args, data.stats["train"]["max_tokens"], logits=False, rows_per_example=2)  # two views
    if dry_run:
        run.preview(preview_splits(tokenizer, data.splits, "pairs", roles=("anchor",)))
        return {"dry_run": True, "train_steps": steps, "trainable_params": trainable, "total_params": total,
                "data": data.stats}
    run.claim()

    def save(trainer: Any, directory: Path) -> None:
        save_sentence_model(trainer.accelerator.unwrap_model(trainer.model).sentence, directory)

    result = run.train(args=args, model=model, tokenizer=tokenizer, train_dataset=data.splits["train"],
                       eval_dataset=None, data_collator=PairCollator(tokenizer, ["anchor"], views=2),
                       trainer_cls=ContrastiveTrainer, save=save, saved_as="model",
                       pair_loss=make_loss("in-batch-negatives", model.sentence, p.temperature,
                                           gather=args.world_size > 1))
    metrics = result.metrics
    metrics.update(trainable_params=trainable, total_params=total, objective="contrastive", pooling=p.pooling,
                   temperature=p.temperature, final_train_loss=final_train_loss(result.trainer))
    return result.finish(metrics, [], summary={
        "model": model_label(cfg.model), "objective": "contrastive (unsupervised SimCSE)", "pooling": p.pooling,
        "data": f"{len(data.splits['train'])} sentences",
    }, headline=["train_loss", "train_tokens_per_second"])


def block_preview(data: Any, tokenizer: Any, objective: str, masking: MaskingSettings) -> list[str]:
    """The first block of every split as the model sees it, collated as in training (CLM: every token trained;
    MLM: masked, with a fixed seed so the run's own random state is untouched), trained tokens in [[ ]]."""
    import torch

    from llmkit.data.preview import example_lines

    collator = BlockCollator(tokenizer, objective, masking)
    collator.counting = False
    lines = []
    for name, ds in data.splits.items():
        if len(ds):
            batch = collator([ds[0]], generator=torch.Generator().manual_seed(0))
            row = {"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()}
            lines += example_lines(tokenizer, row, "lm", f"example {name}[0]")
    return lines


def encoder_source(model_cfg: ModelConfig) -> str:
    """The model directory to start from: an llmkit run's model/ (an mlm pretraining), or the model itself."""
    run = rundir.find_run_directory(model_cfg.name_or_path)
    return str(run.model_dir) if run is not None else model_source(model_cfg)


class Plan:
    """Builds and trains one model of the run (or of a sweep) on the prepared data."""

    def __init__(self, cfg: PretrainConfig, data, tokenizer, masking, run):
        self.cfg, self.data, self.tokenizer, self.masking = cfg, data, tokenizer, masking
        self.run = run  # the RunLifecycle: launch state (only the main process prints), precision, arguments
        self.state = run.state

    def sized(self, size: dict) -> PretrainConfig:
        """The config of one sweep member: model.from_config with the size's fields, no sweep."""
        cfg = copy.deepcopy(self.cfg)
        fields = {k: v for k, v in size.items() if k != "name"}
        if fields:
            cfg.model.from_config = dataclasses.replace(cfg.model.from_config, **fields)
            problems = cfg.model.from_config.validate()
            if problems:
                raise UserError(f"pretrain.sweep: size {size}: " + "; ".join(map(str, problems)))
        cfg.pretrain.sweep = []
        return cfg

    def build_model(self, cfg: PretrainConfig):
        auto = "AutoModelForMaskedLM" if cfg.pretrain.objective == "mlm" else "AutoModelForCausalLM"
        model, _ = load_model(auto, cfg.model, self.tokenizer)
        check_model_fits(model, self.tokenizer, cfg.pretrain.block_size)
        freeze(model, cfg.model.freeze_embeddings, cfg.model.freeze_layers)
        return model

    def arguments(self, cfg: PretrainConfig, run_dir: Path | None = None):
        """TrainingArguments for one model (checkpoints in `run_dir`, a sweep member's folder, or the run's); a
        token budget (pretrain.max_tokens) becomes max_steps over every process's batches."""
        overrides = {"remove_unused_columns": False}  # the collator needs word_start (whole-word masking)
        if "validation" not in self.data.splits:
            overrides.update(eval_strategy="no", load_best_model_at_end=False)
        if cfg.pretrain.max_tokens:
            train = cfg.train
            per_step = (train.per_device_train_batch_size * train.gradient_accumulation_steps
                        * max(self.state.num_processes, 1) * cfg.pretrain.block_size)
            overrides["max_steps"] = math.ceil(cfg.pretrain.max_tokens / per_step)
        return self.run.arguments(run_dir, **overrides)

    def memory(self, cfg: PretrainConfig, model: Any, args: Any) -> Any:
        """The memory estimate of one model: batches of whole blocks, logits over the vocabulary everywhere."""
        return self.run.memory(model, args, cfg.pretrain.block_size, logits=True,
                               fused_head=cfg.pretrain.objective == "clm")

    def dry_run(self, sizes: list[dict]) -> dict:
        out = {"dry_run": True, "data": self.data.stats, "sizes": []}
        for size in sizes:
            cfg = self.sized(size)
            model = self.build_model(cfg)
            args = self.arguments(cfg)
            steps = arguments.planned_steps(args, len(self.data.splits["train"]))
            trainable, total = count_parameters(model)
            self.state.print(f"model: {type(model).__name__}, {total / 1e6:.2f} M parameters "
                             f"({non_embedding_parameters(model) / 1e6:.2f} M non-embedding)"
                             f"{frozen_note(trainable, total)}; plan: {steps} steps")
            self.memory(cfg, model, args)
            out["sizes"].append({"trainable_params": trainable, "total_params": total,
                                 "non_embedding_params": non_embedding_parameters(model), "train_steps": steps})
        return out

    def train(self, cfg: PretrainConfig, run_dir: Path, sweep_member: bool, model: Any = None) -> dict:
        from llmkit.training.trainer import TokenLossTrainer

        objective = cfg.pretrain.objective
        if model is None:
            model = self.build_model(cfg)
        trainable, total = count_parameters(model)
        non_embedding = non_embedding_parameters(model)
        args = self.arguments(cfg, run_dir)
        steps = arguments.planned_steps(args, len(self.data.splits["train"]))
        precision = self.run.precision
        self.state.print(f"model: {type(model).__name__} ({model_label(cfg.model)}), {total / 1e6:.2f} M "
                         f"parameters, {non_embedding / 1e6:.2f} M non-embedding{frozen_note(trainable, total)}; "
                         f"plan: {steps} optimizer steps of "
                         f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} x "
                         f"{args.world_size} blocks of {cfg.pretrain.block_size} tokens, precision {precision}")
        self.memory(cfg, model, args)
        collator = BlockCollator(self.tokenizer, objective, self.masking)
        result = self.run.train(
            cfg=cfg, run_dir=run_dir, args=args, model=model, tokenizer=self.tokenizer,
            train_dataset=self.data.splits["train"], eval_dataset=self.data.splits.get("validation"),
            data_collator=collator, trainer_cls=TokenLossTrainer, shift_labels=objective == "clm")
        trainer, metrics = result.trainer, result.metrics
        train_padding = collator.padding_fraction
        for split, prefix in (("validation", "eval"), ("test", "test")):
            if split in self.data.splits:
                found = trainer.evaluate(self.data.splits[split], metric_key_prefix=prefix)
                metrics.update({k: v for k, v in found.items() if not k.endswith(("_runtime", "_per_second"))})
        metrics.update(trainable_params=trainable, total_params=total, non_embedding_params=non_embedding,
                       train_padding_fraction=round(train_padding, 8), objective=objective,
                       block_size=cfg.pretrain.block_size, final_train_loss=final_train_loss(trainer))
        return result.finish(metrics, [], summary={
            "model": model_label(cfg.model), "objective": objective, "data": describe_splits(self.data.stats),
            "parameters": f"{total:,} ({non_embedding:,} non-embedding)",
            "padding": f"{100 * train_padding:.4f} % of training positions",
        }, headline=[k for k in ("eval_loss", "eval_perplexity", "test_perplexity") if k in metrics]
            + ([] if sweep_member else ["train_tokens_per_second"]))


def frozen_note(trainable: int, total: int) -> str:
    """", N M trainable" when model.freeze_* left part of the model out of training; else nothing."""
    return f", {trainable / 1e6:.2f} M trainable" if trainable < total else ""


def final_train_loss(trainer) -> float | None:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses[-1] if losses else None


def run_sweep(plan: Plan, sizes: list[dict], run_dir: Path, state) -> dict:
    """Train each size in run_dir/sweep/<name> (finished ones are kept on resume), then fit and draw (the main
    process writes)."""
    rundir.check_resume_config(run_dir, plan.cfg)
    if state.is_main_process:
        save_config(plan.cfg, run_dir / "config.yaml", COMMAND)
        rundir.write_json(run_dir / "env.json", rundir.environment(plan.run.precision, state.num_processes))
    rows = [train_size(plan, i, size, len(sizes), run_dir) for i, size in enumerate(sizes)]
    key = "eval_loss" if all(r["eval_loss"] is not None for r in rows) else "final_train_loss"
    params, losses = [r["non_embedding_params"] for r in rows], [r[key] for r in rows]
    try:
        fit = fit_power_law(params, losses)
    except ValueError as e:
        if not plan.cfg.train.smoke:
            raise UserError(f"pretrain.sweep: cannot fit a scaling law: {e}") from None
        # Three steps of random tiny models need not follow a power law; the smoke run checks the plumbing.
        fit = None
        state.print(f"smoke: no scaling-law fit on 3-step tiny models ({e}); the sweep itself ran")
    summary = {"fit_on": key, "fit": fit.to_dict() if fit else None, "sizes": rows}
    metrics = {"sweep_alpha": fit.alpha, "sweep_n_c": fit.n_c, "sweep_r2": fit.r2} if fit else {}
    metrics["sweep_sizes"] = len(rows)
    if state.is_main_process:
        write_sweep_outputs(plan, run_dir, rows, key, fit, summary, metrics)
    return {**metrics, "sweep": summary}


def train_size(plan: Plan, index: int, size: dict, count: int, run_dir: Path) -> dict:
    """One sweep member trained (or, on resume, its finished metrics read back); its row of the sweep table."""
    import json

    cfg = plan.sized(size)
    spec = cfg.model.from_config
    name = size.get("name") or f"{index}-L{spec.num_layers}-H{spec.hidden_size}"
    sub = run_dir / "sweep" / name
    plan.state.print(f"\n=== sweep {index + 1}/{count}: {name} ===")
    if cfg.train.resume and (sub / "metrics.json").is_file():
        metrics = json.loads((sub / "metrics.json").read_text())
        plan.state.print("finished before; kept.")
    else:
        sub.mkdir(parents=True, exist_ok=True)
        metrics = plan.train(cfg, sub, sweep_member=True)
    return {"name": name, "size": {k: v for k, v in size.items() if k != "name"},
            "non_embedding_params": metrics["non_embedding_params"], "total_params": metrics["total_params"],
            **{k: metrics.get(k) for k in ("train_tokens", "final_train_loss", "eval_loss", "eval_perplexity",
                                            "train_runtime", "train_tokens_per_second")}}


def write_sweep_outputs(plan: Plan, run_dir: Path, rows: list[dict], key: str, fit: Any, summary: dict,
                        metrics: dict) -> None:
    """scaling.png, sweep.json, metrics.json, report.md and the printed table."""
    plot_scaling([r["non_embedding_params"] for r in rows], [r[key] for r in rows], fit, run_dir / "scaling.png",
                 labels=[r["name"] for r in rows],
                 ylabel="validation loss" if key == "eval_loss" else "final training loss")
    rundir.write_json(run_dir / "sweep.json", summary)
    rundir.write_json(run_dir / "metrics.json", metrics)
    header = ["size", "non-embedding params", "params", "train tokens", "final train loss", "validation loss",
              "tokens/s"]
    body = markdown_table(header, [[r["name"], r["non_embedding_params"], r["total_params"], r["train_tokens"],
                                    r["final_train_loss"], r["eval_loss"], round(r["train_tokens_per_second"] or 0)]
                                   for r in rows])
    fit_line = f"alpha={fit.alpha:.4f}, N_c={fit.n_c:.3g}, R^2={fit.r2:.4f}" if fit else "none (smoke run)"
    fit_text = (f"L(N) = (N_c / N)^alpha fitted to the {key.replace('_', ' ')} on non-embedding parameters: "
                f"{fit_line}.\n\n![scaling](scaling.png)")
    write_report(run_dir, f"llmkit {COMMAND} sweep", {"model family": plan.cfg.model.from_config.family,
                                                      "run directory": str(run_dir)},
                 metrics, [("Sizes", body), ("Scaling law", fit_text)], [])
    table = "\n".join(f"  {r['name']:<16} N={r['non_embedding_params']:>10,}  {key}={r[key]:.4f}" for r in rows)
    print(f"\nsweep: {len(rows)} sizes, same data and {rows[0]['train_tokens']} training tokens each\n{table}\n"
          f"fit: L(N) = (N_c / N)^alpha with {fit_line}\n"
          f"run: {run_dir}  (sweep.json, scaling.png)")


def describe_splits(stats: dict) -> str:
    return ", ".join(f"{name} {s['documents']} documents / {s['tokens']} tokens / {s['blocks']} blocks"
                     for name, s in stats.items())
