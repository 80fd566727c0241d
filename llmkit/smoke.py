"""Smoke mode: any config, end to end, on a tiny model in seconds, offline (`--smoke`, `train.smoke: true`,
`llmkit smoke PATH...`).

`apply_smoke` turns a loaded config into its smoke version, and the command's normal recipe runs that, so every
code path is the real one:

- each model is replaced by a tiny, randomly initialised model of the same family and architecture (task head
  included or not, as the real checkpoint), vocabulary and tokenizer, built from the real model's config
  (llmkit/models/tiny.py); `from_config` models and every size of a pretrain sweep are shrunk the same way;
- the data is cut (a seeded shuffle of the training rows, the first validation/test rows, as
  data.max_train_samples / max_eval_samples do), training stops after a few steps, logged every step, with the
  configured evaluation and checkpointing done once, at the last step; generation stops after a few tokens;
- everything else (templates, verbalizers, adapters, losses, packing, metrics, precision) is left as configured,
  so a broken config fails as the real run would, with the same message.

`run_configs` runs many configs in dependency order: a config whose model or teacher is another config's
output_dir (a distill teacher, an eval of a run) gets that config's smoke run instead. No heavy imports here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import UserError

SMOKE_ROOT = "smoke"
STEPS = 3  # optimizer steps of every training (enough to see the loss, the scheduler and a checkpoint move)
TRAIN_ROWS = 128  # training rows kept: a seeded shuffle, as data.max_train_samples takes them
EVAL_ROWS = 32  # validation / test rows kept: the first ones, as data.max_eval_samples takes them
UNLABELED_TEXTS = 32  # distill.unlabeled texts the teacher labels
NEW_TOKENS = 8  # generated tokens per prompt (eval generation, finetune samples)
SEEDS = 2  # prompt seeds run (the first two: mean ± std still computed)
SHOTS_HEADROOM = 4  # prompt K-shot runs keep at least this many x K x classes training rows
PRODUCER_SEARCH_LIMIT = 2000  # folders and YAML files looked at to name the config that writes a missing run directory
TABLE_ERROR_CHARS = 160  # of an error's first line in the table (the full message follows it)
SKIPPED_FOLDERS = {SMOKE_ROOT, "runs", "node_modules", "__pycache__", "site-packages"}


def requested(cfg: Any) -> bool:
    """Whether the config itself asks for smoke mode (train.smoke, or eval.smoke for eval configs)."""
    return any(bool(getattr(getattr(cfg, section, None), "smoke", False)) for section in ("train", "eval"))


def default_smoke_dir(command: str, name: str | None, root: str | Path = SMOKE_ROOT) -> Path:
    """smoke/<command>-<config name>: the same directory on every smoke run of a config (replaced each time)."""
    stem = Path(name).stem if name else "run"
    return Path(root) / f"{command}-{stem}"


@dataclass
class SmokeRun:
    """A config turned into its smoke version, what was replaced, and how messages name the replacements."""

    config: Any
    command: str
    names: dict[str, str] = field(default_factory=dict)  # tiny model path -> the reference the config gave
    notes: list[str] = field(default_factory=list)
    replace_output: bool = False  # the default smoke/ directory: replaced when it holds a smoke run
    enabled: bool = True

    def describe(self) -> str:
        return "smoke: " + "; ".join(self.notes)

    def overwrite(self, requested: bool | str) -> bool | str:
        """The run's overwrite mode: the user's --overwrite, else replace the default directory's smoke run only."""
        from llmkit.training.rundir import REPLACE_SMOKE

        return requested or (REPLACE_SMOKE if self.replace_output else False)

    @contextlib.contextmanager
    def original_names(self) -> Iterator[None]:
        """Errors name the models as the config does (pkg:..., a path, a hub id), not the tiny copies' cache
        folders, so a broken config fails with the message of the real run."""
        try:
            yield
        except UserError as e:
            message = str(e)
            for tiny, label in sorted(self.names.items(), key=lambda kv: -len(kv[0])):
                message = message.replace(tiny, label)
            if message != str(e):
                e.args = (message, *e.args[1:])
            raise


APPLIED = "_llmkit_smoke_applied"  # set on a config apply_smoke returned, so it is never shrunk twice


def honoured(command: str):
    """Decorate a recipe's `run(cfg, *, config_path=None, overwrite=False, ...)` so that `train.smoke: true`
    (`eval.smoke`) also works when the recipe is called as a library function; configs the CLI or the smoke
    runner already turned into their smoke version pass through unchanged."""
    import functools

    def wrap(run_fn):
        @functools.wraps(run_fn)
        def run(cfg: Any, *, config_path: str | None = None, overwrite: bool | str = False, **kwargs: Any):
            from llmkit.training.rundir import claims_released

            with claims_released():  # the run directory's lock is given back however the run ends
                if not requested(cfg) or getattr(cfg, APPLIED, False):
                    return run_fn(cfg, config_path=config_path, overwrite=overwrite, **kwargs)
                smoke = apply_smoke(cfg, command, config_path=config_path)
                print(smoke.describe())
                with smoke.original_names():
                    return run_fn(smoke.config, config_path=config_path, overwrite=smoke.overwrite(overwrite),
                                  **kwargs)

        return run

    return wrap


def prepare(cfg: Any, command: str, *, enabled: bool, config_path: str | None = None,
            output_dir: str | Path | None = None) -> SmokeRun:
    """The CLI's entry: `apply_smoke` when --smoke or the config asks for it, else the config unchanged."""
    if not (enabled or requested(cfg)):
        return SmokeRun(config=cfg, command=command, enabled=False)
    return apply_smoke(cfg, command, config_path=config_path, output_dir=output_dir)


def apply_smoke(cfg: Any, command: str, *, config_path: str | None = None, output_dir: str | Path | None = None,
                layers: int | None = None) -> SmokeRun:
    """The smoke version of a loaded config (a copy; `cfg` is not changed).

    Args:
        cfg: A loaded config of `command` (FinetuneConfig, DistillConfig, EvalConfig, ...).
        command: pretrain, finetune, adapter, prompt, distill or eval.
        config_path: The YAML file (names the default output directory and, for a missing run directory, is
            where the config that writes it is looked for).
        output_dir: Where the smoke run goes; default smoke/<command>-<config name>, replaced on every run.
        layers: Keep at least this many layers in the tiny model (a distill config reading this config's run
            keeps some of its layers); default: what the distill configs in this config's folder tree need.

    Raises:
        UserError: a model whose config is not available offline, or a run directory that does not exist yet
            (naming the config that writes it).
    """
    cfg = copy.deepcopy(cfg)
    setattr(cfg, APPLIED, True)
    run = SmokeRun(config=cfg, command=command)
    real_output = cfg.output_dir
    if output_dir is None:
        label = config_path or (getattr(getattr(cfg, "model", None), "name_or_path", None))
        output_dir, run.replace_output = default_smoke_dir(command, label), True
    cfg.output_dir = str(output_dir)
    shrink = _Shrinker(run, getattr(cfg.data, "cache_dir", None), config_path)
    if command == "pretrain" and cfg.pretrain.sweep and cfg.model.from_config is not None:
        cfg.pretrain.sweep = shrink_sweep(cfg.model.from_config, cfg.pretrain.sweep)  # from the real sizes
        sizes = ", ".join(f"{s['num_layers']}x{s['hidden_size']}" for s in cfg.pretrain.sweep)
        run.notes.append(f"pretrain.sweep sizes shrunk in order (layers x hidden: {sizes})")
    if layers is None and config_path and real_output and command != "eval":
        layers = layers_for_readers(real_output, Path(config_path).parent)  # a distill run keeps some of them
    if command == "distill":
        _smoke_distill(cfg, shrink)
    else:
        shrink.model_section(cfg.model, "model.", layers)
    _cut_data(cfg, command, run)
    if hasattr(cfg, "train"):
        _smoke_training(cfg, command, run)
    else:
        cfg.eval.smoke = True
    _cap_generation(cfg, command, run)
    run.notes.append(f"output {cfg.output_dir}" + (" (replaced on every smoke run)" if run.replace_output else ""))
    return run


# ---------------------------------------------------------------- training and data


def _smoke_training(cfg: Any, command: str, run: SmokeRun) -> None:
    """A few optimizer steps, each logged; evaluation and checkpoints as configured, once, at the last step."""
    train = cfg.train
    train.smoke = True
    train.resume = None  # a smoke run always starts over in its own directory
    options = train.passthrough
    configured = options.get("max_steps", -1)
    steps = min(configured, STEPS) if configured and configured > 0 else STEPS
    spec = getattr(cfg, "pretrain", None)
    if spec is not None and spec.max_tokens:  # pretrain's token budget sets max_steps itself
        per_step = train.per_device_train_batch_size * train.gradient_accumulation_steps * spec.block_size
        spec.max_tokens = min(spec.max_tokens, steps * per_step)
        options.pop("max_steps", None)
    else:
        options["max_steps"] = steps
    options["logging_steps"] = 1
    for strategy, every in (("eval_strategy", "eval_steps"), ("save_strategy", "save_steps")):
        value = getattr(options.get(strategy), "value", options.get(strategy))
        if value in ("steps", "epoch"):
            options[strategy], options[every] = "steps", steps
    trains = command != "eval" and not (command == "prompt" and cfg.prompt.mode in ("zero-shot", "in-context"))
    if trains:
        run.notes.append(f"{steps} training steps, each logged")


def _cut_data(cfg: Any, command: str, run: SmokeRun) -> None:
    """A seeded shuffle of TRAIN_ROWS training rows and the first EVAL_ROWS validation/test rows (fewer when the
    config asks for fewer); prompt K-shot runs keep enough training rows to sample K per class from."""
    data = cfg.data
    rows = TRAIN_ROWS
    if command == "prompt":
        per_class = max(cfg.prompt.shots_per_class or 0, cfg.prompt.demonstrations_per_class or 0)
        rows = max(rows, SHOTS_HEADROOM * per_class * len(cfg.prompt.verbalizer))
    data.max_train_samples = min(data.max_train_samples or rows, rows)
    data.max_eval_samples = min(data.max_eval_samples or EVAL_ROWS, EVAL_ROWS)
    note = f"data cut to {data.max_train_samples} training rows (seeded shuffle) and the first " \
           f"{data.max_eval_samples} validation/test rows"
    if command == "distill" and cfg.distill.unlabeled is not None:
        d = cfg.distill
        d.unlabeled_max_samples = min(d.unlabeled_max_samples or UNLABELED_TEXTS, UNLABELED_TEXTS)
        note += f", {d.unlabeled_max_samples} unlabeled texts"
    if command == "prompt" and cfg.prompt.seeds and len(cfg.prompt.seeds) > SEEDS:
        cfg.prompt.seeds = list(cfg.prompt.seeds[:SEEDS])
        note += f", seeds {cfg.prompt.seeds}"
    if command == "eval" and cfg.eval.task in ("perplexity", "auto"):
        note += " (perplexity of a text file: its first lines)"
    run.notes.append(note)


def _cap_generation(cfg: Any, command: str, run: SmokeRun) -> None:
    task = getattr(cfg, "task", None)
    if command != "prompt" and task is not None and getattr(task, "type", None) == "causal-lm":
        task.sample_max_new_tokens = min(task.sample_max_new_tokens, NEW_TOKENS)
    if command == "eval":
        spec = cfg.eval.generation
        spec.max_new_tokens = min(spec.max_new_tokens, NEW_TOKENS)
        if cfg.eval.task == "generation":
            run.notes.append(f"at most {spec.max_new_tokens} new tokens per prompt")


# ---------------------------------------------------------------- models


def _smoke_distill(cfg: Any, shrink: _Shrinker) -> None:
    """The teacher shrunk (keeping the layers the student and the layer map need), the student as configured:
    built from the shrunk teacher, or shrunk itself."""
    d = cfg.distill
    d.teacher = shrink.reference(d.teacher, "distill.teacher", teacher_layers_needed(d),
                                 trust_remote_code=d.teacher_trust_remote_code)
    if d.student.from_teacher is None:
        shrink.model_section(d.student, "distill.student.", None)


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


class _Shrinker:
    """Replaces model references by tiny copies, recording how messages should name them."""

    def __init__(self, run: SmokeRun, cache_dir: str | None, config_path: str | None):
        self.run, self.cache_dir, self.config_path = run, cache_dir, config_path
        self.search_from = Path(config_path).parent if config_path else Path.cwd()

    def model_section(self, section: Any, prefix: str, layers: int | None) -> None:
        """A ModelConfig (or the distill student): from_config shrunk, or the model replaced by its tiny copy."""
        from llmkit.models.loading import model_label

        if section.from_config is not None:
            before = section.from_config
            section.from_config = shrink_spec(before, layers)
            after = section.from_config
            self.run.notes.append(f"{prefix}from_config {before.family} shrunk to {after.num_layers} layers, hidden "
                                  f"{after.hidden_size}, {after.num_heads} heads")
            return
        if section.gguf_file:
            from llmkit.models.gguf import gguf_path
            from llmkit.models.resolve import ModelNotFound
            from llmkit.models.tiny import ModelSource

            try:
                path = gguf_path(section)
            except ModelNotFound as e:
                raise UserError(f"{prefix}name_or_path: {e}") from None
            label = model_label(section)
            source = ModelSource(str(path.parent), label, key=f"{prefix}gguf_file", gguf_file=path.name)
            section.name_or_path = str(self._tiny(source, layers))
            section.gguf_file = None
        elif section.name_or_path:
            section.name_or_path = self.reference(section.name_or_path, f"{prefix}name_or_path", layers,
                                                  revision=section.revision,
                                                  trust_remote_code=section.trust_remote_code)
        section.revision = None  # the tiny copy is a local directory

    def reference(self, ref: str, key: str, layers: int | None, revision: str | None = None,
                  trust_remote_code: bool = False) -> str:
        """The tiny stand-in for a model reference: a tiny copy of a model (directory, pkg:, hub id from the
        cache), a tiny run directory for a finished run, or the reference itself when it is tiny already (a
        smoke run, a tiny copy)."""
        from llmkit.models.resolve import ModelNotFound, resolve_model_path
        from llmkit.models.tiny import ModelSource, is_tiny_dir

        path = Path(ref).expanduser()
        if is_tiny_dir(path) or is_smoke_run(path):
            self.run.notes.append(f"{key.removesuffix('.name_or_path')} {ref}: tiny already, used as it is")
            return ref
        if (path / "config.yaml").is_file():
            return self._run_directory(ref, key, layers)
        if ref.startswith("pkg:") or path.exists():
            try:
                resolved = resolve_model_path(ref)
            except ModelNotFound as e:
                raise UserError(f"{key}: {e}") from None
            return str(self._tiny(ModelSource(resolved, ref, key=key, trust_remote_code=trust_remote_code), layers))
        producer = find_producer(ref, self.search_from)
        if producer is not None:
            return self._producer_smoke_run(ref, key, producer, layers)
        source = ModelSource(ref, ref, key=key, revision=revision, trust_remote_code=trust_remote_code)
        return str(self._tiny(source, layers))

    def _producer_smoke_run(self, ref: str, key: str, producer: Path, layers: int | None) -> str:
        """A run directory another config writes, which does not exist: that config's smoke run when there is one
        (with the layers this config needs), else a message naming the config and how to run both in order."""
        from llmkit.cli import _infer_command

        try:
            command = _infer_command(producer, None)
        except UserError:
            command = None
        candidate = default_smoke_dir(command, str(producer)) if command else None
        if candidate is None or not is_smoke_run(candidate) or not (candidate / "metrics.json").is_file():
            raise UserError(missing_run_message(key, ref, producer, self.config_path))
        have = _run_layers(candidate)
        if layers is not None and have is not None and have < layers:
            shown = _relative(producer)
            raise UserError(f"{key}: {ref} does not exist yet: it is the output_dir of {shown}, and its smoke run "
                            f"{candidate} has {have} layers, fewer than the {layers} this config keeps of it. Run both "
                            f"with `llmkit smoke {shown} {self.config_path or 'CONFIG'}`: the teacher's smoke run then "
                            "keeps as many layers as its students need.")
        self.run.names[str(candidate)] = ref
        self.run.notes.append(f"{key} {ref} (not run here): the smoke run of {_relative(producer)}, {candidate}")
        return str(candidate)

    def _run_directory(self, ref: str, key: str, layers: int | None) -> str:
        """A finished run (not a smoke run): a tiny copy of its model in a run directory of its own, beside a
        copy of its config.yaml, so the run-directory code paths (inherited data settings, labels) stay."""
        import shutil

        from llmkit.data.cache import cache_error, publishing
        from llmkit.models.adapters import find_adapter_dir
        from llmkit.models.tiny import ModelSource
        from llmkit.recipes.evaluation import find_run_directory

        if find_adapter_dir(ref) is not None:
            raise UserError(f"{key}: smoke mode replaces models by tiny copies, but {ref} is an adapter run trained "
                            "on a full-size base model. Smoke-test the config that trained it first and use that "
                            "smoke run (`llmkit smoke TRAINING_CONFIG THIS_CONFIG` runs them in order).")
        run = find_run_directory(ref, key=key)  # refuses a run that did not finish
        tiny = self._tiny(ModelSource(str(run.model_dir), ref, key=key), layers, label_too=False)
        wrapper = tiny.with_name(tiny.name + "-run")
        if not (wrapper / "model").is_dir():
            try:
                with publishing(wrapper, lambda path: (path / "model").is_dir()) as tmp:
                    shutil.copy2(run.path / "config.yaml", tmp / "config.yaml")
                    shutil.copytree(tiny, tmp / "model")
            except OSError as e:  # the cache location failed: name the setting that chose it
                raise cache_error(e, wrapper, self.cache_dir) from None
        self.run.names[str(wrapper)] = ref
        return str(wrapper)

    def _tiny(self, source: Any, layers: int | None, label_too: bool = True) -> Path:
        from llmkit.models.tiny import TinySizes, tiny_info, tiny_model_dir

        sizes = TinySizes(layers=max(TinySizes.layers, layers or 0))
        target = tiny_model_dir(source, sizes, self.cache_dir).resolve()
        info = tiny_info(target)
        if label_too:
            self.run.names[str(target)] = source.label
        what = source.key.removesuffix("name_or_path").removesuffix("gguf_file").rstrip(".") or "model"
        self.run.notes.append(f"{what} {source.label} replaced by a tiny {info['architecture']} ({info['layers']} "
                              f"layers, hidden {info['hidden_size']}, {info['parameters'] / 1e6:.2f} M parameters, "
                              "random weights, the real tokenizer)")
        return target


def shrink_spec(spec: Any, layers: int | None = None) -> Any:
    """A from_config spec with the tiny sizes (at most 2 layers, or `layers`; hidden 64; up to 4 heads dividing it;
    feed-forward 128); positions, vocabulary and extra fields kept (key/value heads and head_dim fitted)."""
    from llmkit.models.tiny import TinySizes, largest_divisor

    tiny = TinySizes()
    hidden = min(spec.hidden_size, tiny.hidden)
    heads = largest_divisor(hidden, min(spec.num_heads, tiny.heads))
    inner = min(spec.intermediate_size or 4 * spec.hidden_size, tiny.intermediate)
    return dataclasses.replace(spec, num_layers=min(spec.num_layers, max(tiny.layers, layers or 0)),
                               hidden_size=hidden, num_heads=heads, intermediate_size=inner,
                               extra=_fit_extra(spec.extra, hidden, heads))


def _fit_extra(extra: dict, hidden: int, heads: int) -> dict:
    from llmkit.models.tiny import largest_divisor

    extra = dict(extra)
    if isinstance(extra.get("num_key_value_heads"), int):
        extra["num_key_value_heads"] = largest_divisor(heads, extra["num_key_value_heads"])
    if isinstance(extra.get("head_dim"), int):
        extra["head_dim"] = hidden // heads
    return extra


def shrink_sweep(base: Any, sweep: list[dict]) -> list[dict]:
    """Every size of a pretrain sweep made tiny with its order kept: the k-th smallest distinct depth becomes k
    layers, the k-th smallest width 16k (64 for one width), each capped at the real size; so the sizes stay
    distinct and the scaling fit still has points to fit."""
    from llmkit.models.tiny import largest_divisor

    merged = [dataclasses.replace(base, **{k: v for k, v in size.items() if k != "name"}) for size in sweep]
    layers = sorted({s.num_layers for s in merged})
    widths = sorted({s.hidden_size for s in merged})
    inners = sorted({s.intermediate_size or 4 * s.hidden_size for s in merged})
    out = []
    for size, spec in zip(sweep, merged):
        depth = min(spec.num_layers, layers.index(spec.num_layers) + 1 if len(layers) > 1 else 2)
        width = min(spec.hidden_size, 16 * (widths.index(spec.hidden_size) + 1) if len(widths) > 1 else 64)
        inner_real = spec.intermediate_size or 4 * spec.hidden_size
        inner = min(inner_real, 32 * (inners.index(inner_real) + 1) if len(inners) > 1 else 128)
        heads = largest_divisor(width, min(spec.num_heads, 4))
        tiny = {**size, "num_layers": depth, "hidden_size": width, "num_heads": heads, "intermediate_size": inner}
        if "extra" in size:
            tiny["extra"] = _fit_extra(size["extra"], width, heads)
        out.append(tiny)
    return out


# ---------------------------------------------------------------- run directories


def is_smoke_run(path: str | Path) -> bool:
    """An llmkit run directory written by a smoke run (its saved config says train.smoke / eval.smoke)."""
    from llmkit.config.loader import read_yaml

    config = Path(path).expanduser() / "config.yaml"
    if not config.is_file():
        return False
    try:
        data = read_yaml(config)
    except UserError:
        return False
    return any(bool((data.get(section) or {}).get("smoke")) for section in ("train", "eval"))


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _configs_near(search_from: Path) -> Iterator[tuple[Path, dict]]:
    """(path, YAML) of the configs in a config's folder tree (from its parent, e.g. configs/) and in ./configs;
    a bounded look (PRODUCER_SEARCH_LIMIT folders and files), skipping hidden folders, smoke/ and runs/."""
    import os

    from llmkit.config.loader import read_yaml

    roots = [search_from.parent if search_from.name else search_from, Path.cwd() / "configs"]
    looked = 0
    for root in dict.fromkeys(r.resolve() for r in roots if r.is_dir()):
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in SKIPPED_FOLDERS)
            looked += 1  # folders count too: a bounded look, even beside a large data tree
            for name in sorted(files):
                if not name.endswith((".yaml", ".yml")):
                    continue
                looked += 1
                if looked > PRODUCER_SEARCH_LIMIT:
                    return
                try:
                    yield Path(folder) / name, read_yaml(Path(folder) / name)
                except UserError:
                    continue


def find_producer(ref: str, search_from: Path) -> Path | None:
    """The config whose output_dir is `ref` (a run directory that does not exist yet), or None."""
    if ref.startswith("pkg:"):
        return None
    for path, raw in _configs_near(search_from):
        output = raw.get("output_dir")
        if isinstance(output, str) and _same_path(output, ref):
            return path
    return None


def layers_for_readers(output_dir: str, search_from: Path) -> int | None:
    """The teacher layers the distill configs near this one need from `output_dir` (its run), or None."""
    needed = []
    for _, raw in _configs_near(search_from):
        teacher = raw.get("distill", {}).get("teacher") if isinstance(raw.get("distill"), dict) else None
        if isinstance(teacher, str) and _same_path(teacher, output_dir):
            needed.append(_layers_needed_by(raw))
    return max(needed) if needed else None


def missing_run_message(key: str, ref: str, producer: Path, config_path: str | None = None) -> str:
    shown = _relative(producer)
    this = _relative(Path(config_path)) if config_path else "CONFIG"
    return (f"{key}: {ref} does not exist yet: it is the output_dir of {shown}, which has not been run here. Smoke "
            f"mode builds tiny models from existing ones, so that config runs first: `llmkit smoke {shown} {this}` "
            f"(or `llmkit smoke` on their folder) runs both in dependency order and points this config at the smoke "
            f"run of {shown}.")


def _run_layers(run_dir: Path) -> int | None:
    """Transformer layers of a run directory's model (None for an adapter run or an unreadable config)."""
    try:
        config = json.loads((run_dir / "model" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    return layers if isinstance(layers, int) else None


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- many configs: `llmkit smoke PATH...`


REFERENCE_KEYS = (("model", "name_or_path"), ("tokenizer", "name_or_path"), ("distill", "teacher"))


@dataclass
class SmokeJob:
    """One config of a smoke suite: its command, where its smoke run goes, what it needs from other configs."""

    path: Path
    command: str | None = None
    output: Path | None = None  # its smoke run directory
    real_output: str | None = None  # output_dir as configured
    overrides: list[str] = field(default_factory=list)  # references to other configs' runs -> their smoke runs
    needs: list[int] = field(default_factory=list)
    layers: int | None = None  # layers a later distill run needs this config's model to keep
    problem: str | None = None  # why it cannot run (unreadable, command unknown)
    raw: dict = field(default_factory=dict)


@dataclass
class SmokeResult:
    """How one config's smoke run went."""

    path: Path
    command: str | None
    passed: bool
    seconds: float
    error: str | None = None
    output: Path | None = None
    log: Path | None = None
    metrics: dict | None = None

    @property
    def first_error_line(self) -> str:
        """The error's first line, cut to TABLE_ERROR_CHARS (the full message follows the table)."""
        line = (self.error or "").strip().splitlines()[0] if self.error else ""
        return line if len(line) <= TABLE_ERROR_CHARS else line[:TABLE_ERROR_CHARS - 3].rstrip(" .") + "..."


def collect_configs(paths: list[str | Path]) -> list[Path]:
    """The YAML configs under `paths` (files as given; folders searched recursively for *.yaml / *.yml), without
    accelerate launch configs and the config.yaml of run directories."""
    from llmkit.config.launch import is_accelerate_config
    from llmkit.config.loader import read_yaml

    found: list[Path] = []
    for given in paths:
        p = Path(given)
        if p.is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise UserError(f"smoke: {p} does not exist; give config files or folders of configs.")
        for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
            parts = f.relative_to(p).parts
            if any(part.startswith(".") for part in parts) or (f.parent / "env.json").is_file():
                continue  # hidden folders; a run directory's saved config
            try:
                if is_accelerate_config(read_yaml(f)):
                    continue
            except UserError:
                pass  # unreadable: reported as a failure of that config
            found.append(f)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"smoke: no YAML configs in {', '.join(map(str, paths))}.")
    return unique


def plan_jobs(paths: list[Path], root: Path = Path(SMOKE_ROOT)) -> list[SmokeJob]:
    """Jobs in dependency order: each config after the configs whose output_dir it reads (model, tokenizer or
    distill teacher); those references point at the producers' smoke runs."""
    from llmkit.cli import _infer_command
    from llmkit.config.loader import read_yaml

    jobs = []
    taken: set[str] = set()
    for path in paths:
        job = SmokeJob(path=path)
        try:
            job.raw = read_yaml(path)
            job.command = _infer_command(path, None)
        except UserError as e:
            job.problem = str(e)
        first = name = default_smoke_dir(job.command or "config", str(path), root)
        copies = 1
        while str(name) in taken:  # two configs of one command with one name, in different folders
            copies += 1
            name = first.with_name(f"{first.name}-{copies}")
        taken.add(str(name))
        job.output = name
        if isinstance(job.raw.get("output_dir"), str):
            job.real_output = job.raw["output_dir"]
        jobs.append(job)
    for i, job in enumerate(jobs):
        for key, ref in _references(job.raw):
            producer = next((j for j, other in enumerate(jobs) if j != i and other.real_output
                             and isinstance(ref, str) and not ref.startswith("pkg:")
                             and _same_path(other.real_output, ref)), None)
            if producer is None:
                continue
            job.needs.append(producer)
            job.overrides.append(f"{key}={jobs[producer].output}")
            if key == "distill.teacher":
                layers = _layers_needed_by(job.raw)
                jobs[producer].layers = max(jobs[producer].layers or 0, layers)
    return _in_dependency_order(jobs)


def _references(raw: dict) -> list[tuple[str, str]]:
    refs = []
    for section, key in REFERENCE_KEYS:
        value = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str):
            refs.append((f"{section}.{key}", value))
    student = ((raw.get("distill") or {}).get("student") or {}) if isinstance(raw.get("distill"), dict) else {}
    if isinstance(student, dict) and isinstance(student.get("name_or_path"), str):
        refs.append(("distill.student.name_or_path", student["name_or_path"]))
    return refs


def _layers_needed_by(raw: dict) -> int:
    """teacher_layers_needed for a distill config read as plain YAML (2 when it cannot be read that way)."""
    from types import SimpleNamespace

    try:
        d = raw["distill"]
        student = d.get("student") or {"from_teacher": {"every": 2}}
        spec = student.get("from_teacher")
        section = SimpleNamespace(
            student=SimpleNamespace(from_teacher=SimpleNamespace(keep_layers=spec.get("keep_layers"),
                                                                 every=spec.get("every")) if spec else None),
            beta=float(d.get("beta") or 0), layer_map={int(k): int(v) for k, v in (d.get("layer_map") or {}).items()})
        return teacher_layers_needed(section)
    except (AttributeError, KeyError, TypeError, ValueError):
        return 2


def _in_dependency_order(jobs: list[SmokeJob]) -> list[SmokeJob]:
    """Producers before their consumers, otherwise in the given order; a cycle is reported on its members."""
    done: list[int] = []
    pending = list(range(len(jobs)))
    while pending:
        ready = [i for i in pending if all(n in done for n in jobs[i].needs)]
        if not ready:
            for i in pending:
                jobs[i].problem = jobs[i].problem or ("smoke: these configs read each other's output_dir in a circle: "
                                                      + ", ".join(str(jobs[j].path) for j in pending))
                jobs[i].needs = []
            ready = pending[:]
        done.append(ready[0])
        pending.remove(ready[0])
    order = {old: new for new, old in enumerate(done)}
    ordered = [jobs[i] for i in done]
    for job in ordered:
        job.needs = [order[n] for n in job.needs]
    return ordered


def load_for_command(command: str, path: Path, overrides: list[str]) -> Any:
    """The config as the command's CLI loads it (eval: with the data settings of the run it evaluates)."""
    from llmkit import cli

    if command == "eval":
        return cli._load_eval_config(path, overrides, None)
    return cli._load(command, path, overrides)


def run_config(command: str, path: Path, overrides: list[str] = (), output_dir: Path | None = None,
               layers: int | None = None, announce: bool = True) -> dict:
    """Run one config in smoke mode in this process, as `llmkit COMMAND PATH --smoke` does; return its metrics."""
    import importlib

    from llmkit.cli import RECIPES
    from llmkit.training.rundir import REPLACE_SMOKE

    cfg = load_for_command(command, path, list(overrides))
    run = apply_smoke(cfg, command, config_path=str(path), output_dir=output_dir, layers=layers)
    if announce:
        print(run.describe(), flush=True)
    recipe = importlib.import_module(RECIPES[command][0])
    with run.original_names():  # smoke replaces only an earlier smoke run, never a real run in its place
        return recipe.run(run.config, config_path=str(path), overwrite=REPLACE_SMOKE)


def run_jobs(jobs: list[SmokeJob], verbose: bool = False, progress=print) -> list[SmokeResult]:
    """Run every job in this process, one after the other; a failing config never stops (or changes) the next:
    its error is recorded, the environment, working directory and log handlers are restored."""
    results: list[SmokeResult] = []
    for index, job in enumerate(jobs):
        shown = _relative(job.path)
        progress(f"[{index + 1}/{len(jobs)}] {shown} ({job.command or '?'}) ...")
        result = _run_job(job, [results[n] for n in job.needs], verbose)
        results.append(result)
        status = "pass" if result.passed else f"FAIL: {result.first_error_line}"
        progress(f"[{index + 1}/{len(jobs)}] {shown}: {status} ({result.seconds:.1f} s)")
    return results


def _run_job(job: SmokeJob, needed: list[SmokeResult], verbose: bool) -> SmokeResult:
    import gc
    import os
    import traceback

    start = time.perf_counter()
    log = job.output.with_name(job.output.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    environment, cwd = dict(os.environ), os.getcwd()
    error, metrics = None, None
    with _captured(log, verbose) as out:
        try:
            failed = [r for r in needed if not r.passed]
            if job.problem:
                raise UserError(job.problem)
            if failed:
                raise UserError(f"needs the smoke run of {_relative(failed[0].path)}, which failed.")
            metrics = run_config(job.command, job.path, job.overrides, job.output, job.layers)
        except KeyboardInterrupt:
            raise
        except UserError as e:
            error = str(e)
            print(f"error: {error}", file=out)
        except BaseException as e:  # noqa: BLE001 - one config's crash (or sys.exit) must not end the suite
            error = f"{type(e).__name__}: {e}".strip()
            traceback.print_exc(file=out)
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(environment)
    _restore_library_logging()
    gc.collect()
    return SmokeResult(path=job.path, command=job.command, passed=error is None, error=error,
                       seconds=time.perf_counter() - start, output=job.output, log=log, metrics=metrics)


@contextlib.contextmanager
def _captured(log: Path, verbose: bool):
    """The job's output (prints, progress bars, library logs) into its log file (and the terminal, verbose)."""
    import sys

    with log.open("w", encoding="utf-8") as fh:
        target = _Tee(fh, sys.stdout) if verbose else fh
        with contextlib.redirect_stdout(target), contextlib.redirect_stderr(target):
            yield target


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


def _restore_library_logging() -> None:
    from llmkit.cli import _reopen_library_log_streams

    _reopen_library_log_streams()


def format_table(results: list[SmokeResult]) -> str:
    """config | command | result | seconds | error (its first line)."""
    rows = [(_relative(r.path), r.command or "?", "pass" if r.passed else "FAIL", f"{r.seconds:.1f}",
             r.first_error_line) for r in results]
    header = ("config", "command", "result", "seconds", "error")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0]), str(row[1]).ljust(widths[1]), str(row[2]).ljust(widths[2]),
                 str(row[3]).rjust(widths[3])]
        lines.append("  ".join(cells) + (f"  {row[4]}" if row[4] else ""))
    lines.insert(1, "  ".join("-" * w for w in widths) + "  -----")
    return "\n".join(line.rstrip() for line in lines)


def summary(results: list[SmokeResult], seconds: float) -> str:
    failed = [r for r in results if not r.passed]
    text = (f"{len(results)} config{'s' if len(results) != 1 else ''}: {len(results) - len(failed)} passed, "
            f"{len(failed)} failed in {seconds:.1f} s")
    slowest = max(results, key=lambda r: r.seconds, default=None)
    if slowest is not None:
        text += f" (slowest {slowest.seconds:.1f} s: {_relative(slowest.path)})"
    return text


def run_configs(paths: list[str | Path], root: str | Path = SMOKE_ROOT, verbose: bool = False,
                progress=print) -> list[SmokeResult]:
    """Smoke-run every config under `paths` (files or folders) in dependency order; the results in that order."""
    jobs = plan_jobs(collect_configs(paths), Path(root))
    return run_jobs(jobs, verbose=verbose, progress=progress)

