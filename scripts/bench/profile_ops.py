"""Where the wall time of llmkit's training steps goes, by op family (issue 26: MFU falls short of 0.35 of the
measured bf16 matmul peak; this says what the rest of a step is).

    python scripts/bench/profile_ops.py CONFIG [key=value ...] [--skip 2] [--steps 5] [--top 10]
                                        [--command finetune] [--output-dir DIR]

Runs the config's real training in this process, through llmkit's own entry (`llmkit.cli.app`, the same as
`llmkit --quiet COMMAND CONFIG key=value ... --output-dir DIR`; a temporary directory unless --output-dir), with
`train.max_steps` set to skip + 2 x steps + 1 unless an override sets it. llmkit's code is not changed: the script
wraps `transformers.Trainer.__init__` so that every Trainer gets one more TrainerCallback (`OpProfile`), which

- starts `torch.profiler.profile` (CPU activities only, record_shapes and with_stack off) at the start of
  optimizer step `--skip` + 1 (the first `--skip` steps are warm-up) and stops it at the start of the step after
  the `--steps` profiled ones. A window runs from one `on_step_begin` to the next, so each profiled step holds
  its forward and backward passes, clipping, the optimizer step, zero_grad, the callbacks and logging, and the
  DataLoader fetch of the next step's batch (the Trainer fetches a step's batches before its on_step_begin);
  each step is a `profile_ops#step N` record_function scope.
- then times `--steps` more steps without the profiler (perf_counter only), to show what the profiler itself
  costs (the steps differ in their batches: compare the seconds per token, not per step, where lengths vary);
- keeps evaluation and checkpoint saving out of both windows (clears control.should_evaluate / should_save
  there) and stops the training after them; the recipe then finishes as usual (saves the model, evaluates).

Attribution, over the main thread's events inside the step scopes (every CPU event of a training step is on
the thread that calls train(): the autograd engine runs CPU backward there too; time on other threads is
reported apart and not in the shares):

- These record_function scopes count whole, Python inside included: `Optimizer.step#...` and
  `Optimizer.zero_grad#...` (torch.optim's labels; the Trainer's zero_grad is the model's, so usually only the
  first appears) -> optimizer; `enumerate(DataLoader)#...__next__` (the DataLoader's fetch and collation) -> data.
- Every other top-level op (an op `ns::name` with no op above it) counts with its total CPU time, which is the
  sum of the self CPU times of it and every op nested in it, so nothing is counted twice, to a family:
    * inside an autograd node (`autograd::engine::evaluate_function: MmBackward0`), the family of the node's
      forward op (Mm -> mm -> matmul; AddmmBackward0's bias-gradient sum is matmul too), when it has one;
    * inside llmkit's CPU dropout (the autograd Function `_MaskedScale`, forward and `_MaskedScaleBackward`),
      softmax/dropout/activation;
    * otherwise the family of the op's own name (FAMILY_PATTERNS below). A top-level op of no family counts its
      self time to `other` and its nested ops by their own names (aten::linear's nested aten::addmm is
      matmul through linear's family already);
    * except the dtype and device conversions nested in it (aten::_to_copy, e.g. bf16 autocast's casts of a
      linear's input and weights, which run inside aten::linear): those count to copies/casts, labelled
      `aten::_to_copy (inside OP)`.
- `Python / framework` = the profiled wall time minus all of the above: Python of the modules' forward, the
  autograd engine's own bookkeeping, the Trainer loop, llmkit's callbacks and CpuDropout's TorchFunctionMode,
  and the profiler's own cost per recorded event (see `profiler_overhead` in the JSON).

Families (FAMILY_PATTERNS, on the op name without its namespace; the first pattern that matches wins):
    matmul        mm, addmm, bmm, baddbmm, addbmm, matmul, linear, _addmm_activation, addmv, mv, dot, einsum,
                  mkldnn/onednn linear and matmul kernels, int8 mm
    attention     scaled_dot_product_attention and its kernels (_scaled_dot_product_flash_attention_for_cpu and
                  backward, efficient/flash/cudnn attention); eager attention is matmul + softmax + dropout +
                  elementwise, its softmax counted as softmax
    softmax/dropout/activation   softmax, _softmax, _softmax_backward_data, dropout, native_dropout(_backward),
                  bernoulli_, llmkit's _MaskedScale, gelu, silu, relu, tanh, sigmoid, erf (and their backward)
    layer norm    native_layer_norm(_backward), layer_norm, rms_norm, group_norm, batch_norm
    embedding     embedding, embedding_backward, embedding_dense_backward
    loss          cross_entropy_loss, log_softmax, _log_softmax(_backward_data), nll_loss(_nd, 2d, backward),
                  mse_loss, binary_cross_entropy(_with_logits)
    optimizer     the Optimizer scopes above, and outside them gradient clipping's _foreach_norm, _foreach_mul_ and
                  linalg_vector_norm (the Trainer's clip_grad_norm_); any other _foreach_* op
    data          the DataLoader scope above
    copies/casts  to, _to_copy, copy_, clone, contiguous, type_as (bf16 autocast's casts of weights and
                  activations are _to_copy under aten::to)
    elementwise   add, sub, mul, div, neg, pow, sqrt, rsqrt, exp, log, abs, clamp, where, masked_fill, fill_, zero_,
                  reductions (sum, mean, max, min, any, all, norm), comparisons, isfinite/isnan, bitwise ops, lerp,
                  addcmul, addcdiv, random_ (llmkit's dropout draws count to dropout through their scope)
    other         every other op: views (view, reshape, transpose, t, expand, as_strided, ...), allocation
                  (empty, zeros), item, ...; the ones above 1 % of the wall time are listed
    Python / framework   the rest, as above

Prints a table (family, seconds, share of the profiled wall time), the top ops, the ops of `other` above 1 %,
then one JSON line: {"families": {NAME: {"seconds": s, "share": x}}, "wall_s": ..., "steps": ...,
"tokens_per_step": ..., ...}. Shares sum to 1. The profiled steps run slower than unprofiled ones (each recorded
op costs the profiler a little): read the shares, and `profiler_overhead`, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

FAMILIES = ("matmul", "attention", "softmax/dropout/activation", "layer norm", "embedding", "loss", "optimizer",
            "data", "copies/casts", "elementwise", "other", "Python / framework")
PYTHON = "Python / framework"

_ELEMENTWISE = ("add_?|sub_?|rsub|mul_?|div_?|neg_?|pow_?|sqrt_?|rsqrt_?|exp_?|log_?|abs_?|clamp.*|clip_?|where|"
                "masked_fill_?|fill_|zero_|sum|mean|max|min|amax|amin|any|all|norm|prod|cumsum|eq_?|ne_?|lt_?|gt_?|"
                "le_?|ge_?|logical_.*|bitwise_.*|isfinite|isnan|isinf|nan_to_num_?|reciprocal_?|lerp_?|addcmul_?|"
                "addcdiv_?|sign|floor|ceil|round|trunc|maximum|minimum|sum_to_size|random_|uniform_|normal_|square|"
                "exp2|log1p|expm1|sin|cos|remainder|fmod|float_power")
FAMILY_PATTERNS = [  # (family, regex matched in full against the op name without its namespace)
    ("matmul", r"mm|addmm|bmm|baddbmm|addbmm|matmul|linear|_addmm_activation|addmv|mv|dot|vdot|einsum|tensordot|"
               r"linear_backward|mkldnn_.*(linear|matmul|mm).*|onednn_.*|_int_mm|_weight_int8pack_mm|.*_mm"),
    ("attention", r".*scaled_dot_product.*|.*flash_attention.*|.*efficient_attention.*|.*cudnn_attention.*"),
    ("softmax/dropout/activation",
     r"_?softmax|_softmax_backward_data|.*dropout.*|bernoulli_?|_masked_scale|gelu_?|gelu_backward|silu_?|"
     r"silu_backward|relu_?|threshold_backward|tanh_?|tanh_backward|sigmoid_?|sigmoid_backward|erf_?|"
     r"hardswish.*|leaky_relu.*|glu.*|elu.*|softplus.*|mish.*"),
    ("layer norm", r".*layer_norm.*|.*rms_norm.*|.*group_norm.*|.*batch_norm.*"),
    ("embedding", r"embedding.*|_embedding.*"),
    ("loss", r"cross_entropy_loss|cross_entropy|_?log_softmax|_log_softmax_backward_data|nll_loss.*|mse_loss.*|"
             r"binary_cross_entropy.*|smooth_l1_loss.*|kl_div.*"),
    ("optimizer", r"_foreach_.*|_fused_adam.*|_fused_sgd.*|linalg_vector_norm"),
    ("copies/casts", r"to|_to_copy|to_copy|copy_|_copy_from.*|clone|contiguous|type_as|_to_dense"),
    ("elementwise", _ELEMENTWISE),
]
_COMPILED = [(family, re.compile(pattern)) for family, pattern in FAMILY_PATTERNS]
WHOLE_SCOPES = (("Optimizer.step#", "optimizer"), ("Optimizer.zero_grad#", "optimizer"),
                ("enumerate(DataLoader)#", "data"))
NODE = "autograd::engine::evaluate_function: "
STEP_SCOPE = "profile_ops#step"
CAST = "aten::_to_copy"


def family_of(name: str) -> str:
    """The family of an op (`aten::addmm`), an autograd node (`AddmmBackward0`) or an autograd Function
    (`_MaskedScale`): its short name, snake-cased and without `Backward<N>`, matched against FAMILY_PATTERNS."""
    short = name.rsplit("::", 1)[-1]
    short = re.sub(r"Backward\d*$", "", short)
    short = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", short).lower()
    for family, pattern in _COMPILED:
        if pattern.fullmatch(short):
            return family
    return "other"


def is_op(name: str) -> bool:
    """An operator event (`aten::mm`, `quantized::linear`), not a scope, an autograd node or the engine's wrapper."""
    return "::" in name and not name.startswith(("autograd::", "torch::", "profiler::")) and "#" not in name


def nested_casts(event: Any) -> list:
    """The outermost aten::_to_copy events nested in `event` (a dtype or device conversion)."""
    found = []
    for child in event.cpu_children:
        if child.name == CAST:
            found.append(child)
        else:
            found.extend(nested_casts(child))
    return found


def whole_scope(name: str) -> str | None:
    return next((family for prefix, family in WHOLE_SCOPES if name.startswith(prefix)), None)


class Attribution:
    """Microseconds per family and per label (op or scope name) over a profiled window."""

    def __init__(self):
        self.family_us: dict[str, float] = defaultdict(float)
        self.label_us: dict[tuple[str, str], float] = defaultdict(float)  # (family, label) -> us

    def add(self, family: str, label: str, us: float) -> None:
        self.family_us[family] += us
        self.label_us[(family, label)] += us

    def walk(self, event: Any, scope: str | None = None, backward: bool = False) -> None:
        """Attribute one event of a step (see the module docstring); `scope`: the family of the autograd node or
        autograd Function it sits in, if any; `backward`: under the autograd engine (labelled so)."""
        name = event.name
        whole = whole_scope(name)
        if whole:
            self.add(whole, name, event.cpu_time_total)
            return
        if is_op(name):
            label = f"{name} (backward)" if backward else name
            family = scope or family_of(name)
            if family == "other" and event.cpu_children:
                self.add("other", label, event.self_cpu_time_total)
                for child in event.cpu_children:
                    self.walk(child, None, backward)
                return
            casts = 0.0
            if family != "copies/casts":  # e.g. autocast's casts of a bf16 linear's input and weights
                casts = sum(cast.cpu_time_total for cast in nested_casts(event))
                if casts:
                    self.add("copies/casts", f"aten::_to_copy (inside {label})", casts)
            self.add(family, label, event.cpu_time_total - casts)
            return
        # a scope, an autograd node or the engine's wrapper: its own time is Python / framework (the rest)
        inner = family_of(name[len(NODE):] if name.startswith(NODE) else name)
        if inner != "other":
            scope = inner
        for child in event.cpu_children:
            self.walk(child, scope, backward or name.startswith(NODE))


def attribute(events: Any) -> dict:
    """Per-family seconds over the step scopes of the main thread, plus what ran on other threads."""
    steps = [e for e in events if e.name.startswith(STEP_SCOPE)]
    if not steps:
        raise RuntimeError("the profile holds no step scope; no training step was profiled")
    main_thread = steps[0].thread
    attribution = Attribution()
    for step in steps:
        for child in step.cpu_children:
            attribution.walk(child)
    wall_us = sum(s.cpu_time_total for s in steps)
    ops_in_steps = sum(1 for e in events if e.thread == main_thread and is_op(e.name)
                       and steps[0].time_range.start <= e.time_range.start <= steps[-1].time_range.end)
    other_threads_us = sum(e.self_cpu_time_total for e in events if e.thread != main_thread)
    return {"attribution": attribution, "wall_us": wall_us, "steps": len(steps),
            "step_us": [s.cpu_time_total for s in steps], "ops": ops_in_steps, "other_threads_us": other_threads_us}


def report(result: dict, top: int) -> dict:
    """The JSON record: families (seconds and share of the profiled wall time, Python / framework the rest),
    the top labels and the labels of `other` above 1 %."""
    attribution, wall_us = result["attribution"], result["wall_us"]
    family_us = {family: attribution.family_us.get(family, 0.0) for family in FAMILIES if family != PYTHON}
    family_us[PYTHON] = wall_us - sum(family_us.values())
    families = {family: {"seconds": round(us / 1e6, 6), "share": round(us / wall_us, 6)}
                for family, us in family_us.items()}
    labels = sorted(attribution.label_us.items(), key=lambda item: -item[1])
    top_ops = [{"op": label, "family": family, "seconds": round(us / 1e6, 6), "share": round(us / wall_us, 6)}
               for (family, label), us in labels[:top]]
    other_ops = [{"op": label, "seconds": round(us / 1e6, 6), "share": round(us / wall_us, 6)}
                 for (family, label), us in labels if family == "other" and us / wall_us > 0.01]
    return {"families": families, "wall_s": round(wall_us / 1e6, 6), "steps": result["steps"],
            "step_s": [round(us / 1e6, 6) for us in result["step_us"]], "top_ops": top_ops, "other_ops": other_ops,
            "ops_per_step": round(result["ops"] / result["steps"], 1),
            "other_threads_s": round(result["other_threads_us"] / 1e6, 6)}


def make_callback(skip: int, steps: int):
    """The TrainerCallback that profiles steps skip+1 .. skip+steps, then times `steps` more without the profiler;
    a class made here so that importing this module does not import transformers."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import TrainerCallback

    class OpProfile(TrainerCallback):
        def __init__(self):
            self.phase = "warm-up"  # -> profiling -> timing -> done
            self.profiler: Any = None
            self.scope: Any = None
            self.step_start = 0.0
            self.steps_done = 0
            self.window_start = self.tokens_start = 0.0
            self.profiled: dict = {}
            self.unprofiled: dict | None = None
            self.settings: dict = {}

        def _open_step(self, n: int) -> None:
            self.scope = record_function(f"{STEP_SCOPE} {n}")
            self.scope.__enter__()

        def _close_step(self) -> None:
            self.scope.__exit__(None, None, None)
            self.scope = None

        def _window(self, state) -> dict:
            seconds = time.perf_counter() - self.window_start
            tokens = (state.num_input_tokens_seen or 0) - self.tokens_start
            return {"wall_s": seconds, "steps": steps, "tokens": tokens}

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if self.phase == "warm-up" and state.global_step == skip:
                self.settings = {"bf16": bool(args.bf16), "threads": torch.get_num_threads(),
                                 "batch_size": args.per_device_train_batch_size,
                                 "gradient_accumulation_steps": args.gradient_accumulation_steps,
                                 "attn_implementation": getattr(getattr(model, "config", None),
                                                                "_attn_implementation", None)}
                self.phase = "profiling"
                self.profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=False, with_stack=False)
                self.profiler.start()
                self.window_start, self.tokens_start = time.perf_counter(), state.num_input_tokens_seen or 0
                self._open_step(state.global_step + 1)
            elif self.phase == "profiling":
                self._close_step()
                if state.global_step < skip + steps:
                    self._open_step(state.global_step + 1)
                    return
                self.profiled = self._window(state)
                self.profiler.stop()
                self.phase = "timing"
                self.window_start, self.tokens_start = time.perf_counter(), state.num_input_tokens_seen or 0
            elif self.phase == "timing" and state.global_step >= skip + 2 * steps:
                self.unprofiled = self._window(state)
                self.phase = "done"
                control.should_training_stop = True  # this step still runs; the recipe then finishes as usual

        def _quiet_window(self, control) -> None:
            if self.phase in ("profiling", "timing"):
                control.should_evaluate = False
                control.should_save = False

        def on_step_end(self, args, state, control, **kwargs):
            self._quiet_window(control)

        def on_epoch_end(self, args, state, control, **kwargs):
            self._quiet_window(control)

        def on_train_end(self, args, state, control, **kwargs):
            if self.phase == "profiling":  # the run ended inside the window: say so rather than report a part
                self._close_step()
                self.profiler.stop()
                self.phase = "cut short"

    return OpProfile()


def attach(callback: Any) -> Any:
    """Add `callback` to every transformers Trainer built from now on (llmkit's GuardedTrainer and its subclasses
    call Trainer.__init__ through super()); returns a function that undoes it."""
    from transformers import Trainer

    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(callback)

    Trainer.__init__ = init

    def detach() -> None:
        Trainer.__init__ = original

    return detach


def run_llmkit(command: str, config: str, overrides: list[str], output_dir: Path) -> int:
    """`llmkit --quiet COMMAND CONFIG OVERRIDES --output-dir DIR` in this process; llmkit's stdout goes to stderr
    so that stdout holds the table and the JSON line. Returns the exit code."""
    from llmkit.cli import app

    with contextlib.redirect_stdout(sys.stderr):
        code = app(["--quiet", command, config, *overrides, "--output-dir", str(output_dir)], prog_name="llmkit",
                   standalone_mode=False)
    return int(code or 0)


def format_table(record: dict) -> str:
    lines = [f"{'family':<28} {'seconds':>9} {'share':>7}"]
    for family, figures in record["families"].items():
        lines.append(f"{family:<28} {figures['seconds']:>9.4f} {figures['share']:>7.1%}")
    lines.append(f"{'profiled wall time':<28} {record['wall_s']:>9.4f} {1:>7.1%}   ({record['steps']} steps)")
    lines.append("")
    lines.append(f"top {len(record['top_ops'])} ops and scopes:")
    for op in record["top_ops"]:
        lines.append(f"  {op['op'][:60]:<60} {op['family']:<28} {op['seconds']:>8.4f} {op['share']:>6.1%}")
    if record["other_ops"]:
        lines.append("in `other`, above 1 %:")
        for op in record["other_ops"]:
            lines.append(f"  {op['op'][:60]:<60} {op['seconds']:>8.4f} {op['share']:>6.1%}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="an llmkit config (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as llmkit takes them (train.x=y)")
    parser.add_argument("--skip", type=int, default=2, help="warm-up optimizer steps before the profile (2)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps profiled (5)")
    parser.add_argument("--top", type=int, default=10, help="ops and scopes listed by time (10)")
    parser.add_argument("--command", help="the llmkit command (default: inferred from the config)")
    parser.add_argument("--output-dir", type=Path, help="the run directory (default: a temporary one, removed)")
    args = parser.parse_intermixed_args(argv)
    if args.skip < 0 or args.steps < 1 or args.top < 0:
        parser.error("--skip must be >= 0, --steps >= 1, --top >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from llmkit.commands import infer_command

    command = infer_command(Path(args.config), args.command)
    overrides = list(args.overrides)
    if not any(o.startswith("train.max_steps=") for o in overrides):
        overrides.append(f"train.max_steps={args.skip + 2 * args.steps + 1}")
    callback = make_callback(args.skip, args.steps)
    detach = attach(callback)
    try:
        with tempfile.TemporaryDirectory(prefix="profile-ops-") as tmp:
            code = run_llmkit(command, args.config, overrides, args.output_dir or Path(tmp) / "run")
    finally:
        detach()
    if code:
        sys.exit(f"profile_ops: llmkit {command} exited with {code} (its message is above)")
    if callback.phase in ("warm-up", "cut short"):
        sys.exit(f"profile_ops: the training ended before {args.skip} + {args.steps} steps were done and the next "
                 "began; give more steps (train.max_steps) or fewer --skip/--steps")
    record = report(attribute(callback.profiler.events()), args.top)
    profiled = callback.profiled
    record["tokens_per_step"] = profiled["tokens"] / args.steps if profiled["tokens"] else None
    unprofiled = callback.unprofiled
    if unprofiled:
        record["unprofiled"] = {"wall_s": round(unprofiled["wall_s"], 6), "steps": unprofiled["steps"],
                                "tokens_per_step": unprofiled["tokens"] / unprofiled["steps"] or None}
        per_token = [w["wall_s"] / w["tokens"] for w in (profiled, unprofiled) if w["tokens"]]
        # profiled / unprofiled seconds per token (per step when the Trainer counts no tokens)
        record["profiler_overhead"] = round(per_token[0] / per_token[1], 3) if len(per_token) == 2 else \
            round(profiled["wall_s"] / unprofiled["wall_s"], 3)
    record.update(command=command, config=args.config, overrides=overrides, skip=args.skip,
                  settings=callback.settings)
    print(format_table(record))
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
