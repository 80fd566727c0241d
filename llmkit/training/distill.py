"""Knowledge distillation: the loss terms, the Trainer that runs the teacher beside the student, and the
on-disk cache of teacher outputs.

Loss = alpha * CE(student, hard labels)
     + (1 - alpha) * tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))
     + beta * sum over mapped layers of || h_T / ||h_T|| - P(h_S) / ||P(h_S)|| ||^2

Written by hand: transformers and TRL have no distillation trainer for encoders (TRL's GKD trainer is for
on-policy generation with causal LMs only), and none with hidden-state matching.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from llmkit.data.columns import column_values, length_order, list_lengths
from llmkit.training.trainer import GuardedTrainer

INDEX_COLUMN = "example_index"  # row index of a training example, to find its cached teacher outputs
PROJECTIONS = "distill_projections"  # the student's submodule holding P while training (removed before saving)


# ---------------------------------------------------------------- the loss terms


def kd_per_row(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau)) for every row (last dimension = classes / vocabulary).

    The tau^2 factor keeps the gradients' scale independent of tau (Hinton et al., 2015).
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * (t.exp() * (t - s)).sum(dim=-1)


def feature_per_token(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """|| h_T / ||h_T|| - h_S / ||h_S|| ||^2 per position (h_S already projected to the teacher's width)."""
    s = F.normalize(student_hidden.float(), dim=-1)
    t = F.normalize(teacher_hidden.float(), dim=-1)
    return (t - s).pow(2).sum(dim=-1)


@dataclass
class DistillSettings:
    """What the trainer needs to know to compute the loss."""

    alpha: float
    temperature: float
    beta: float
    causal_lm: bool
    layer_pairs: list[tuple[int, int]] = field(default_factory=list)  # (student block, teacher block), 0-based
    cache: TeacherCache | None = None  # precomputed teacher outputs, by training example index

    @property
    def needs_teacher(self) -> bool:
        return self.alpha < 1 or self.beta > 0


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student block i -> teacher block round((i + 1) * L_T / L_S) - 1: the last student block meets the last
    teacher block, the others spread evenly (TinyBERT's uniform mapping)."""
    return [(i, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


def add_projections(student: Any, pairs: list[tuple[int, int]], student_width: int, teacher_width: int) -> int:
    """Attach the learned projections P (student width -> teacher width) when the widths differ; return the
    number of their parameters. They live on the student while training so the optimizer, checkpoints and
    resume include them, and are removed before the student is saved (`DropProjections`)."""
    if student_width == teacher_width or not pairs:
        return 0
    projections = torch.nn.ModuleDict({str(s): torch.nn.Linear(student_width, teacher_width) for s, _ in pairs})
    setattr(student, PROJECTIONS, projections)
    return sum(p.numel() for p in projections.parameters())


class DropProjections(TrainerCallback):
    """Remove the projections from the student at the end of training: the saved model is a plain model."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and hasattr(model, PROJECTIONS):
            delattr(model, PROJECTIONS)


# ---------------------------------------------------------------- the trainer


class DistillTrainer(GuardedTrainer):
    """Trainer whose training loss is the distillation loss; evaluation is the student's plain loss and metrics.

    The teacher stays outside the student (not optimised, not saved), in eval mode under no-grad; with a teacher
    cache it is not run at all while training. Each loss term is logged beside `loss` (loss_ce, loss_kd,
    loss_feature).
    """

    def __init__(self, *args, teacher: Any = None, settings: DistillSettings, **kwargs):
        callbacks = list(kwargs.pop("callbacks", None) or []) + [DropProjections()]
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.settings = settings
        self.teacher = teacher
        if teacher is not None and settings.needs_teacher and settings.cache is None:
            self.teacher.to(self.args.device)
        # Classification: each term is a mean over the micro-batch, so the Trainer divides by the accumulation
        # steps. Causal LM: token sums over the tokens of the whole accumulation window (num_items_in_batch,
        # which the Trainer counts only for models it believes take loss kwargs).
        self.loss_is_scaled_for_ga = settings.causal_lm
        if settings.causal_lm:
            self.model_accepts_loss_kwargs = True
            self._loss_shifts_labels = True
        self._terms: dict[str, list] = {}  # name -> [sum of the term's values, count] since the last log

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if INDEX_COLUMN not in self._signature_columns:
            self._signature_columns.append(INDEX_COLUMN)  # keep the index column through remove_unused_columns

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index = inputs.pop(INDEX_COLUMN, None)
        if not model.training:  # evaluation: the student's own loss, as in finetune
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        s = self.settings
        labels = inputs.pop("labels")
        want_hidden = s.beta > 0
        outputs = model(**inputs, output_hidden_states=want_hidden)
        teacher_logits, teacher_hidden = self._teacher_outputs(inputs, index) if s.needs_teacher else (None, None)
        if s.causal_lm:
            terms = self._causal_lm_terms(model, inputs, labels, outputs, teacher_logits, teacher_hidden,
                                          num_items_in_batch)
        else:
            terms = self._classification_terms(model, inputs, labels, outputs, teacher_logits, teacher_hidden)
        loss = s.alpha * terms["loss_ce"]
        if "loss_kd" in terms:
            loss = loss + (1 - s.alpha) * terms["loss_kd"]
        if "loss_feature" in terms:
            loss = loss + s.beta * terms["loss_feature"]
        scale = 1
        if s.causal_lm and self.args.average_tokens_across_devices and num_items_in_batch is not None:
            scale = self.accelerator.num_processes  # num_items_in_batch counts every rank's tokens
        self._record(terms, scale)
        loss = loss * scale
        return (loss, outputs) if return_outputs else loss

    def _classification_terms(self, model, inputs, labels, outputs, teacher_logits, teacher_hidden) -> dict:
        s = self.settings
        logits = outputs.logits
        scored = labels != -100  # rows without a hard label (teacher-labelled soft targets) skip CE
        terms = {"loss_ce": F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
                 / scored.sum().clamp(min=1)}
        if s.alpha < 1:
            terms["loss_kd"] = kd_per_row(logits, teacher_logits, s.temperature).mean()
        if s.beta > 0:
            mask = inputs["attention_mask"].bool()
            per_token = self._feature_terms(model, outputs.hidden_states, teacher_hidden)
            terms["loss_feature"] = sum(t[mask].mean() for t in per_token)
        return terms

    def _causal_lm_terms(self, model, inputs, labels, outputs, teacher_logits, teacher_hidden,
                         num_items_in_batch) -> dict:
        s = self.settings
        # position i predicts label i + 1; positions whose next label is -100 (prompt, padding) are not scored
        logits, targets = outputs.logits[:, :-1], labels[:, 1:]
        scored = targets != -100
        denominator = num_items_in_batch if num_items_in_batch is not None else scored.sum().clamp(min=1)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                             reduction="sum")  # a flat view: a transposed vocabulary dim is slow (trainer.py)
        terms = {"loss_ce": ce / denominator}
        if s.alpha < 1:
            terms["loss_kd"] = kd_per_row(logits[scored], teacher_logits[:, :-1][scored], s.temperature).sum() \
                / denominator
        if s.beta > 0:
            per_token = self._feature_terms(model, outputs.hidden_states, teacher_hidden)
            terms["loss_feature"] = sum(t[:, :-1][scored].sum() for t in per_token) / denominator
        return terms

    def _feature_terms(self, model, student_hidden, teacher_hidden) -> list[torch.Tensor]:
        projections = getattr(self.accelerator.unwrap_model(model), PROJECTIONS, None)
        out = []
        for (i, _), teacher_h in zip(self.settings.layer_pairs, teacher_hidden):
            h = student_hidden[i + 1]  # hidden_states[0] is the embedding output
            if projections is not None:
                h = projections[str(i)](h)
            out.append(feature_per_token(h, teacher_h))
        return out

    def _teacher_outputs(self, inputs, index) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The teacher's logits and mapped hidden states for this batch: from the cache, or by running it."""
        s = self.settings
        if s.cache is not None:
            return s.cache.batch(index.tolist(), inputs, self.args.device)
        with torch.no_grad():
            out = self.teacher(**inputs, output_hidden_states=s.beta > 0)
        hidden = [out.hidden_states[j + 1] for _, j in s.layer_pairs] if s.beta > 0 else None
        return out.logits, hidden

    def _record(self, terms: dict, scale: float) -> None:
        # Summed as detached tensors: reading a value out (a device sync on GPUs) waits for the next log.
        for name, value in terms.items():
            total = self._terms.setdefault(name, [0.0, 0])
            total[0] = total[0] + value.detach() * scale
            total[1] += 1

    def log(self, logs: dict, *args, **kwargs) -> None:
        # Training logs carry `loss`; add each term's mean since the last log (this process's batches). Causal-LM
        # terms are normalised over the accumulation window, so their sum per optimizer step is the step's value.
        if "loss" in logs and self._terms:
            steps = max(self.state.global_step - getattr(self, "_last_term_step", 0), 1)
            for name, (total, count) in self._terms.items():
                logs[name] = round(float(total) / (steps if self.settings.causal_lm else count), 6)
            self._terms, self._last_term_step = {}, self.state.global_step
        super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(INDEX_COLUMN, None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


class IndexedCollator:
    """Wraps a collator: takes each feature's `example_index` out before collating and returns them as a tensor
    beside the batch (collators that flatten or pad would drop or choke on it)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, features):
        indices = [f.pop(INDEX_COLUMN) for f in features] if features and INDEX_COLUMN in features[0] else None
        batch = self.collate(features)
        if indices is not None:
            batch[INDEX_COLUMN] = torch.tensor(indices, dtype=torch.long)
        return batch


# ---------------------------------------------------------------- teacher outputs, precomputed


class TeacherCache:
    """Teacher logits (and mapped hidden states) of every training example, in memory-mapped .npy files.

    Layout: `logits.npy` [positions, classes or vocabulary] (one position per example for classification, one
    per token for causal LMs), `hidden_<j>.npy` [tokens, width] per mapped teacher layer j, and
    `offsets.npy` / `token_offsets.npy` giving each example's first row. Examples are looked up by their index
    in the training set (the `example_index` column).
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.meta = json.loads((directory / "meta.json").read_text())
        self.logits = np.load(directory / "logits.npy", mmap_mode="r")
        self.offsets = np.load(directory / "offsets.npy")
        self.token_offsets = np.load(directory / "token_offsets.npy")
        self.hidden = [np.load(directory / f"hidden_{j}.npy", mmap_mode="r") for j in self.meta["layers"]]

    def _rows(self, array, offsets, indices) -> list[np.ndarray]:
        return [np.asarray(array[offsets[i]:offsets[i + 1]]) for i in indices]

    def batch(self, indices: list[int], inputs: dict, device) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Teacher outputs laid out like the student's batch: one row per example (classification), or placed at
        the real tokens of each row (padded batches) / concatenated (packed causal-LM batches)."""
        logits = self._rows(self.logits, self.offsets, indices)
        hidden = [self._rows(h, self.token_offsets, indices) for h in self.hidden]
        if not self.meta["per_token_logits"]:
            teacher_logits = torch.from_numpy(np.stack([r[0] for r in logits]).astype(np.float32)).to(device)
        else:
            teacher_logits = self._place(logits, inputs, device)
        return teacher_logits, [self._place(rows, inputs, device) for rows in hidden] if hidden else None

    @staticmethod
    def _place(rows: list[np.ndarray], inputs: dict, device) -> torch.Tensor:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        width = rows[0].shape[-1]
        if mask is None:  # a packed batch: one row holding the examples one after another
            flat = torch.from_numpy(np.concatenate(rows).astype(np.float32))
            return flat.reshape(1, -1, width).to(device)
        out = torch.zeros(*ids.shape, width)
        for b, r in enumerate(rows):
            out[b, mask[b].bool().cpu()] = torch.from_numpy(r.astype(np.float32))
        return out.to(device)


def data_digest(dataset) -> str:
    """A hash of the token ids of every example, in order (what the teacher's outputs depend on)."""
    h = hashlib.sha256()
    for ids in column_values(dataset, "input_ids"):
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def teacher_batches(dataset, tokenizer, batch_size: int):
    """(indices, padded batch) over the dataset in length order, so batches carry little padding."""
    order = length_order(dataset)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = dataset.select(chunk)
        features = [{c: row[c] for c in columns} for row in rows]
        yield chunk, tokenizer.pad(features, return_tensors="pt")


def run_teacher(teacher, dataset, tokenizer, *, batch_size: int, layers: list[int], per_token_logits: bool,
                precision: str, device, write) -> None:
    """Run the teacher over `dataset` (no-grad, eval mode, autocast like training) and hand each example's
    outputs to `write(index, logits [positions, C], hidden [layers][tokens, H])`."""
    teacher.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None)
    with torch.no_grad(), autocast:
        for chunk, batch in teacher_batches(dataset, tokenizer, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = teacher(**batch, output_hidden_states=bool(layers))
            mask = batch["attention_mask"].bool()
            for b, index in enumerate(chunk):
                real = mask[b]
                logits = out.logits[b][real] if per_token_logits else out.logits[b:b + 1]
                hidden = [out.hidden_states[j + 1][b][real] for j in layers]
                write(index, logits.float().cpu().numpy(), [h.float().cpu().numpy() for h in hidden])


def build_teacher_cache(directory: Path, teacher, dataset, tokenizer, *, batch_size: int, layers: list[int],
                        per_token_logits: bool, num_outputs: int, hidden_width: int, precision: str,
                        device) -> TeacherCache:
    """Compute the cache into a temporary folder, then rename it into place (a crash leaves no half cache)."""
    lengths = list_lengths(dataset, "input_ids")
    token_offsets = np.concatenate([[0], np.cumsum(lengths)])
    offsets = token_offsets if per_token_logits else np.arange(len(lengths) + 1, dtype=np.int64)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = np.float16 if per_token_logits else np.float32  # vocabulary-sized rows: half the disk
    logits = np.lib.format.open_memmap(tmp / "logits.npy", mode="w+", dtype=dtype,
                                       shape=(int(offsets[-1]), num_outputs))
    hidden = [np.lib.format.open_memmap(tmp / f"hidden_{j}.npy", mode="w+", dtype=np.float16,
                                        shape=(int(token_offsets[-1]), hidden_width)) for j in layers]

    def write(index, example_logits, example_hidden):
        logits[offsets[index]:offsets[index + 1]] = example_logits
        for array, h in zip(hidden, example_hidden):
            array[token_offsets[index]:token_offsets[index + 1]] = h

    start = time.perf_counter()
    run_teacher(teacher, dataset, tokenizer, batch_size=batch_size, layers=layers, per_token_logits=per_token_logits,
                precision=precision, device=device, write=write)
    for array in [logits, *hidden]:
        array.flush()
    np.save(tmp / "offsets.npy", offsets)
    np.save(tmp / "token_offsets.npy", token_offsets)
    (tmp / "meta.json").write_text(json.dumps({"layers": layers, "per_token_logits": per_token_logits,
                                               "examples": len(lengths),
                                               "seconds": round(time.perf_counter() - start, 2)}))
    try:
        tmp.rename(directory)
    except OSError:  # another process stored the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    return TeacherCache(directory)


def cache_size_bytes(dataset, *, per_token_logits: bool, num_outputs: int, layers: list[int],
                     hidden_width: int) -> int:
    tokens = int(list_lengths(dataset, "input_ids").sum())
    positions = tokens if per_token_logits else len(dataset)
    return positions * num_outputs * (2 if per_token_logits else 4) + tokens * hidden_width * 2 * len(layers)


def inference_speed(models: dict[str, tuple], batch_size: int, precision: str, device,
                    rounds: int = 2) -> dict[str, float]:
    """Examples per second of a plain no-grad forward pass for each model over its (model, dataset, collate):
    the same examples, each model reading them tokenized its own way. Batches built once, one warm-up batch
    per model, then the models timed in turn (alternating, best of `rounds`), so a noisy machine affects both
    alike."""
    batches = {name: _batches(dataset, collate, batch_size, device) for name, (_, dataset, collate) in models.items()}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    best = dict.fromkeys(models, 0.0)
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=dtype,
                                         enabled=dtype is not None):
        for name, (model, _, _) in models.items():
            model.eval()(**batches[name][0])
        for _ in range(rounds):
            for name, (model, dataset, _) in models.items():
                start = time.perf_counter()
                for batch in batches[name]:
                    model(**batch)
                best[name] = max(best[name], len(dataset) / (time.perf_counter() - start))
    return best


def _batches(dataset, collate, batch_size: int, device) -> list[dict]:
    batches = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        batch = collate([{k: v for k, v in row.items() if k != INDEX_COLUMN} for row in rows])
        batch.pop("labels", None)
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches
