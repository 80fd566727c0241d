"""Narrow Trainer subclasses."""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from llmkit.data import columns
from llmkit.training.dropout import CpuDropout
from llmkit.training.progress import TrainingProgress, use_llmkit_progress

STAGING = ".incomplete"  # checkpoints are written under checkpoints/.incomplete/ and renamed when complete
MAX_SKIPPED_IN_A_ROW = 10


def agree_across_processes(flags: list[bool], device: Any) -> list[bool]:
    """Each flag set on any process is set on all of them (an all-reduce of max), so that every rank of a
    multi-process run stops, saves or skips at the same step; unchanged in a single process."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def length_order(dataset: Any) -> list[int] | None:
    """The row indices of a tokenized dataset, longest `input_ids` first (stable among equal lengths); None for
    anything else (preference pairs, iterable datasets): the caller keeps transformers' sampler then. A list of
    indices is a valid DataLoader sampler."""
    names = getattr(dataset, "column_names", None)
    if not isinstance(names, list) or "input_ids" not in names:
        return None
    return columns.length_order(dataset, longest_first=True)


class NonFiniteGuard(TrainerCallback):
    """A NaN or infinite loss or gradient norm: the update of that step is not applied, then the run stops
    (`train.on_nan: stop`, naming the step) or goes on with the next batch (`skip`; MAX_SKIPPED_IN_A_ROW bad
    steps in a row stop it all the same, since then the model itself is broken).

    Checked on every step, not only at logging steps: HF's logging_nan_inf_filter would hide a NaN loss from the
    logs, and an update with a NaN gradient makes every weight NaN for good. The losses of a step are kept as
    device tensors and read once, at the optimizer step (one host sync per step, none per micro-batch).

    It is also where the processes of a multi-process run agree on how a step ended, in one all-reduce: a bad
    update, and a Ctrl-C / SIGTERM that `interrupt` (an InterruptCallback) caught on any of them.
    """

    def __init__(self, policy: str = "stop", interrupt: Any = None):
        self.policy = policy
        self.interrupt = interrupt
        self.grad_norm: Any = None
        self.decided: bool | None = None  # the optimizer step's verdict (None: not reached, an fp16 overflow skip)
        self._bad_loss: Any = None  # device tensors: any non-finite loss in this step, and the first such value
        self._first_bad: Any = None
        self.bad_step: int | None = None  # the step that stopped the run
        self.bad_value: float | None = None
        self.skipped: list[int] = []  # steps whose update was dropped (policy skip)
        self._in_a_row = 0

    def loss_seen(self, loss: Any) -> None:
        import torch

        loss = loss.detach()
        bad = ~torch.isfinite(loss)
        if self._bad_loss is None:
            self._bad_loss, self._first_bad = bad, torch.where(bad, loss, torch.zeros_like(loss))
        else:
            self._first_bad = torch.where(bad & ~self._bad_loss, loss, self._first_bad)
            self._bad_loss = self._bad_loss | bad

    def update_is_bad(self, scaled: bool) -> bool:
        """The update about to be applied is poisoned: a non-finite loss in this step, or a non-finite gradient
        norm (except under fp16 loss scaling, where an infinite norm is the scaler's own overflow skip)."""
        import torch

        checks = [] if self._bad_loss is None else [self._bad_loss]
        if not scaled and self.grad_norm is not None:
            norm = torch.as_tensor(self.grad_norm)
            checks.append(~torch.isfinite(norm.to(checks[0].device) if checks else norm))
        self.decided = bool(torch.stack(checks).any()) if checks else False
        return self.decided

    def on_step_end(self, args, state, control, **kwargs):
        local = self.decided if self.decided is not None else bool(self._bad_loss is not None and self._bad_loss)
        requested = bool(self.interrupt is not None and self.interrupt.requested)
        requested, bad = agree_across_processes([requested, local], args.device)
        if bad:
            self._count_bad_step(state, control)
        else:
            self._in_a_row = 0
        if requested:
            self.interrupt.requested = True
            self.interrupt.signal_name = self.interrupt.signal_name or "SIGTERM"  # another rank was signalled
            control.should_save = self.bad_step is None  # a stopped run keeps its newest good checkpoint
            control.should_training_stop = True
        self.grad_norm, self.decided, self._bad_loss, self._first_bad = None, None, None, None

    def _count_bad_step(self, state, control) -> None:
        loss_was_bad = self._bad_loss is not None and bool(self._bad_loss)
        value = self._first_bad if loss_was_bad else self.grad_norm
        self.bad_value = float(value) if value is not None else float("nan")
        self._in_a_row += 1
        if self.policy == "skip" and self._in_a_row < MAX_SKIPPED_IN_A_ROW:
            self.skipped.append(state.global_step)
            return
        self.bad_step = state.global_step
        control.should_training_stop = True
        control.should_save = False  # the last checkpoint stays the newest good state


class GuardedTrainer(Trainer):
    """The Trainer every llmkit recipe trains with: non-finite steps are caught (NonFiniteGuard) and checkpoints
    are written whole or not at all.

    transformers writes checkpoint-N file by file and only then rotates old checkpoints, so a full disk or a kill
    while saving leaves a half-written checkpoint-N that a resume would pick as the newest. Here it is written
    under checkpoints/.incomplete/ and renamed into place once every process has finished writing (a rename on
    one filesystem is atomic): checkpoints/checkpoint-N is complete or absent.
    """

    def __init__(self, *args, on_nan: str = "stop", interrupt: Any = None, cpu_dropout: str = "fast", **kwargs):
        self.guard = NonFiniteGuard(on_nan, interrupt)
        callbacks = list(kwargs.pop("callbacks", None) or []) + [self.guard]
        super().__init__(*args, callbacks=callbacks, **kwargs)
        use_llmkit_progress(self)  # a bar on a terminal, aligned lines elsewhere (training/progress.py)
        self._staging: str | None = None
        # train.cpu_dropout: fast -> CpuDropout's masks for every dropout of a training step on CPU
        self._dropout = CpuDropout if cpu_dropout == "fast" and self.args.device.type == "cpu" else nullcontext

    # ---- non-finite steps

    def training_step(self, model, inputs, num_items_in_batch=None):
        with self._dropout():
            loss = super().training_step(model, inputs, num_items_in_batch)
        self.guard.loss_seen(loss)
        return loss

    def evaluation_loop(self, *args, **kwargs):
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TrainingProgress):
                callback.phase = prefix  # the bar of predictions on the test split reads `test`
        return super().evaluation_loop(*args, **kwargs)

    def _get_eval_sampler(self, eval_dataset):
        # Evaluation and prediction batches ordered by length, longest first, so that each batch pads only to its
        # own longest row: transformers' sampler keeps the file order (or, under group_by_length, sorts random
        # chunks of one eval batch each), which padded the 872 SST-2 dev sentences to 2.1 x their tokens at batch
        # 128. The order is invisible to the figures: every metric pairs predictions with label_ids, both gathered
        # in sampler order. One process only; under DDP transformers' sampler shards the set as accelerate expects.
        order = length_order(eval_dataset) if self.args.world_size == 1 else None
        return order if order is not None else super()._get_eval_sampler(eval_dataset)

    def _get_grad_norm(self, model, grad_norm=None):
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.guard.grad_norm = norm
        return norm

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        step = optimizer.step

        def guarded_step(*args, **kwargs):
            # Wrapped before the LR scheduler wraps it in turn. Under fp16 the grad scaler calls this only for
            # finite gradients; its own overflow skips never get here.
            if self.guard.update_is_bad(scaled=self.accelerator.scaler is not None):
                return None
            return step(*args, **kwargs)

        optimizer.step = guarded_step
        return optimizer

    # ---- checkpoints written whole

    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        final_root = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = final_root / STAGING
        main = self.args.should_save
        if main and (staging / name).exists():
            shutil.rmtree(staging / name)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # rotation there sees only the staging folder: a no-op
        except BaseException:
            if main:  # a full disk: free what the partial checkpoint took; the complete ones stay untouched
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank's files (e.g. rng_state_1.pth) are written
        if main:
            target = final_root / name
            if target.exists():  # saved again at the same step (a resumed run)
                shutil.rmtree(target)
            os.replace(staging / name, target)
            if not any(staging.iterdir()):
                staging.rmdir()
            best = self.state.best_global_step
            if best and (final_root / f"{PREFIX_CHECKPOINT_DIR}-{best}").is_dir():
                # transformers looked for the best checkpoint beside the staged one
                self.state.best_model_checkpoint = str(final_root / f"{PREFIX_CHECKPOINT_DIR}-{best}")
                self.state.save_to_json(str(target / "trainer_state.json"))
            rotate_checkpoints(output_dir=str(final_root), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


class MeanLossTrainer(GuardedTrainer):
    """For models whose loss is a per-micro-batch mean (sequence classification heads).

    transformers 5 treats a loss as already normalised over the gradient
    accumulation window when the model's forward takes **kwargs (BERT's does),
    and then skips the division by `gradient_accumulation_steps`, making loss
    and gradients GA x too large. Declaring the loss
    unscaled restores the division, so GA 4 x batch 8 trains like batch 32.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Nor is it normalised over the processes: for a model taking **kwargs the Trainer multiplies the loss by
        # the number of processes (assuming it was divided by every rank's num_items_in_batch), so under DDP the
        # gradients of a per-batch mean came out world_size x too large. The model gets no num_items_in_batch
        # either, so a head whose loss_function would use it still returns a per-batch mean.
        self.model_accepts_loss_kwargs = False


class FusedCausalLoss:
    """A causal-LM trainer's training steps compute the loss through training/fused_loss.py (LM head and
    cross-entropy chunk by chunk over the scored tokens, no vocabulary-sized logits) where the model allows it
    (`fused_head`); evaluation, prediction and every other model keep the Trainer's path."""

    _fused: Any = False  # not looked up yet

    def _fused_head(self, model, inputs) -> Any:
        import torch

        from llmkit.training.fused_loss import for_training

        if self._fused is False:
            self._fused = for_training(self.model, self.args)
        usable = model is self.model and model.training and torch.is_grad_enabled() and "labels" in inputs
        return self._fused if usable else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from llmkit.training.fused_loss import causal_lm_loss

        fused = None if return_outputs else self._fused_head(model, inputs)
        if fused is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        # Over the accumulation window's tokens (num_items_in_batch), as the model's own loss is: every model type
        # in FUSED_MODEL_TYPES takes the loss kwargs, so the Trainer passes it the count and then leaves the loss as
        # it is (TokenLossTrainer's compute_loss_func divides by it too).
        with self.accelerator.autocast():  # as accelerate wraps the model's forward (bf16), not its backbone's
            return causal_lm_loss(*fused, inputs, labels, num_items_in_batch)


class CausalLMTrainer(FusedCausalLoss, GuardedTrainer):
    """Supervised fine-tuning of a causal LM (finetune and adapter, task causal-lm): the model's loss, already
    normalised over the tokens of the accumulation window, with the fused head in training steps. Under
    train.label_smoothing_factor the Trainer's label smoother runs instead (it needs the logits)."""

    smooths_labels = True


def per_example_nll(logits, labels, shift: bool):
    """Summed float32 negative log-likelihood and the number of scored tokens of each row.

    Causal LMs (`shift`): the logits at position i predict the label at i + 1; positions labelled -100 are
    not scored.
    """
    import torch.nn.functional as F

    if shift:  # shift the labels, not the logits: slicing the logits would copy all of them once more
        labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    # Over a flat (tokens, vocabulary) view: with the vocabulary as dim 1 of a transposed tensor, the log-softmax
    # walks memory with a stride and a training step of the tiny GPT-2 ran ~15 % slower (scripts/bench).
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                          reduction="none").view(labels.shape)
    return nll.sum(dim=1), (labels != -100).sum(dim=1)


class TokenLossTrainer(FusedCausalLoss, GuardedTrainer):
    """Language-model pretraining: the loss is the mean negative log-likelihood per predicted token.

    Training: summed token NLL over the tokens of the whole gradient-accumulation window (`num_items_in_batch`,
    counted by the Trainer across ranks), the same for causal and masked LMs (BERT's MLM head returns a
    per-micro-batch mean that transformers 5 would not rescale under accumulation). Evaluation: the NLL sum
    and token count of every row are gathered, so `eval_loss` is exp-able into the perplexity of the whole
    validation set (a mean of per-batch means is not, when batches differ in scored tokens).
    """

    def __init__(self, *args, shift_labels: bool, **kwargs):
        super().__init__(*args, compute_loss_func=self._token_loss, compute_metrics=self._perplexity, **kwargs)
        self.shift_labels = shift_labels
        if not shift_labels:
            self._fused = None  # masked LMs score positions in place, not the next token
        # transformers counts num_items_in_batch over labels[..., 1:] only for models whose loss_type is
        # ForCausalLM; GPT-2's is None, so say what this loss shifts.
        self._loss_shifts_labels = shift_labels

    def _token_loss(self, outputs, labels, num_items_in_batch=None):
        nll, count = per_example_nll(outputs.logits, labels, self.shift_labels)
        denominator = num_items_in_batch if num_items_in_batch is not None else count.sum().clamp(min=1)
        return nll.sum() / denominator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        import torch

        inputs = self._prepare_inputs(inputs)
        labels = inputs.pop("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**inputs).logits
        nll, count = per_example_nll(logits, labels, self.shift_labels)
        stats = torch.stack([nll, count.float()], dim=1)
        return (nll.sum() / count.sum().clamp(min=1)).detach(), stats, stats

    METRICS = ("token_loss", "perplexity", "tokens")  # what its evaluation reports (beside the loss)

    @staticmethod
    def _perplexity(prediction) -> dict:
        import math

        nll, tokens = prediction.predictions[:, 0].sum(), prediction.predictions[:, 1].sum()
        loss = float(nll / max(tokens, 1))
        return {"token_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(tokens)}

    def evaluation_loop(self, *args, **kwargs):
        counting = getattr(self.data_collator, "counting", None)
        if counting is not None:
            self.data_collator.counting = False  # evaluation batches are not training padding
        try:
            output = super().evaluation_loop(*args, **kwargs)
        finally:
            if counting is not None:
                self.data_collator.counting = counting
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        token_loss = output.metrics.pop(f"{prefix}_token_loss", None)
        if token_loss is not None:
            output.metrics[f"{prefix}_loss"] = token_loss  # the token-weighted mean, not the per-batch mean
        return output
