"""Smoke mode: any config, end to end, on a tiny model in seconds, offline (`--smoke`, `train.smoke: true`,
`llmkit smoke PATH...`).

`apply_smoke` turns a loaded config into its smoke version, and the command's normal recipe runs that, so every
code path is the real one:

- each model is replaced by a tiny, randomly initialised model of the same family and architecture (task head
  included or not, as the real checkpoint), vocabulary and tokenizer, built from the real model's config
  (llmkit/models/tiny.py); `from_config` models and every size of a size sweep are shrunk the same way;
- the data is cut (a seeded shuffle of the training rows, the first validation/test rows, as
  data.max_train_samples / max_eval_samples do), training stops after a few steps, logged every step, with the
  configured evaluation and checkpointing done once, at the last step; generation stops after a few tokens;
- everything else (templates, verbalizers, adapters, losses, packing, metrics, precision) is left as configured,
  so a broken config fails as the real run would, with the same message.

What is generic lives here; what differs per command each recipe declares in its `SMOKE` (a `SmokeSpec`: which
sections hold models, how many training rows it needs, whether it trains, and an `adjust` hook for its own
settings). This module knows no command by name. Running many configs in dependency order (`llmkit smoke
PATH...`) is llmkit/smoke_runner.py. No heavy imports here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config.loader import read_yaml
from llmkit.data.cache import cache_error, publishing
from llmkit.errors import UserError
from llmkit.models.adapters import find_adapter_dir
from llmkit.models.loading import model_label
from llmkit.models.resolve import ModelNotFound, resolve_model_path
from llmkit.models.tiny import ModelSource, TinySizes, is_tiny_dir, largest_divisor, tiny_info, tiny_model_dir
from llmkit.training.rundir import REPLACE_SMOKE, claims_released, find_run_directory, read_marker

SMOKE_ROOT = "smoke"
STEPS = 3  # optimizer steps of every training (enough to see the loss, the scheduler and a checkpoint move)
TRAIN_ROWS = 128  # training rows kept: a seeded shuffle, as data.max_train_samples takes them
EVAL_ROWS = 32  # validation / test rows kept: the first ones, as data.max_eval_samples takes them
EXTRA_TEXTS = 32  # texts beside the data that a command labels or reads (a distiller's unlabeled texts)
NEW_TOKENS = 8  # generated tokens per prompt (evaluation by generation, samples after SFT)
SEEDS = 2  # seeds of a command that reruns per seed (the first two: mean ± std still computed)
PRODUCER_SEARCH_LIMIT = 2000  # folders and YAML files looked at to name the config that writes a missing run directory
SKIPPED_FOLDERS = {SMOKE_ROOT, "runs", "node_modules", "__pycache__", "site-packages"}


@dataclass(frozen=True)
class SmokeSpec:
    """How one command's config shrinks in smoke mode, beside what every config gets (tiny models for its model
    sections, the data cut, a few training steps, the output in smoke/). A recipe module declares it as SMOKE.

    - `model_sections`: the config's model sections (ModelConfig-like) whose model becomes a tiny copy;
    - `train_rows(cfg)`: training rows the config needs kept (e.g. K examples per class per seed), when more
      than TRAIN_ROWS;
    - `trains(cfg)`: whether the run trains (the note says how many steps);
    - `adjust(cfg, shrink)`: the command's own changes, after the generic ones (a teacher shrunk, a sweep's
      sizes, generation capped), with `shrink`'s tools;
    - `references(raw)`: for a config read as plain YAML, `(key, value, layers)` of every setting that may name
      another config's run (its model, a teacher) and how many layers this config keeps of it (None: no need),
      so `llmkit smoke` runs the producer first with enough layers.
    """

    model_sections: tuple[str, ...] = ("model",)
    train_rows: Callable[[Any], int] | None = None
    trains: Callable[[Any], bool] = lambda cfg: True
    adjust: Callable[[Any, Shrink], None] | None = None
    references: Callable[[dict], list[tuple[str, str, int | None]]] = lambda raw: model_references(raw)


def model_references(raw: dict, keys: tuple[str, ...] = ("model.name_or_path", "tokenizer.name_or_path")
                     ) -> list[tuple[str, str, int | None]]:
    """`(key, value, None)` for each of the dotted `keys` a raw config sets to a string."""
    found = []
    for key in keys:
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str):
            found.append((key, node, None))
    return found


def flagged_sections(cfg: Any) -> list[Any]:
    """The config's sections that carry a `smoke` flag (train:, or a command's own section when it does not
    train)."""
    return [section for f in dataclasses.fields(cfg)
            if hasattr(section := getattr(cfg, f.name), "smoke") and dataclasses.is_dataclass(section)]


def requested(cfg: Any) -> bool:
    """Whether the config itself asks for smoke mode (train.smoke, or its own section's smoke flag)."""
    return any(bool(section.smoke) for section in flagged_sections(cfg))


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


def honoured(command: str, spec: SmokeSpec | None = None):
    """Decorate a recipe's `run(cfg, *, config_path=None, overwrite=False, ...)` so that `train.smoke: true`
    (`eval.smoke`) also works when the recipe is called as a library function; configs the CLI or the smoke
    runner already turned into their smoke version pass through unchanged. The run directory's lock is given back
    however the run ends."""
    import functools

    def wrap(run_fn):
        @functools.wraps(run_fn)
        def run(cfg: Any, *, config_path: str | None = None, overwrite: bool | str = False, **kwargs: Any):
            with claims_released():
                if not requested(cfg) or getattr(cfg, APPLIED, False):
                    return run_fn(cfg, config_path=config_path, overwrite=overwrite, **kwargs)
                smoke = apply_smoke(cfg, command, spec or SmokeSpec(), config_path=config_path)
                print(smoke.describe())
                with smoke.original_names():
                    return run_fn(smoke.config, config_path=config_path, overwrite=smoke.overwrite(overwrite),
                                  **kwargs)

        return run

    return wrap


def prepare(cfg: Any, command: str, spec: SmokeSpec, *, enabled: bool, config_path: str | None = None,
            output_dir: str | Path | None = None, layers: int | None = None) -> SmokeRun:
    """The CLI's entry: `apply_smoke` when --smoke or the config asks for it, else the config unchanged."""
    if not (enabled or requested(cfg)):
        return SmokeRun(config=cfg, command=command, enabled=False)
    return apply_smoke(cfg, command, spec, config_path=config_path, output_dir=output_dir, layers=layers)


def apply_smoke(cfg: Any, command: str, spec: SmokeSpec, *, config_path: str | None = None,
                output_dir: str | Path | None = None, layers: int | None = None) -> SmokeRun:
    """The smoke version of a loaded config (a copy; `cfg` is not changed).

    Args:
        cfg: A loaded config of `command`.
        command: The command's name (names the default output directory smoke/<command>-<config name>).
        spec: What the command declares about shrinking its config (SmokeSpec).
        config_path: The YAML file (names the default output directory and, for a missing run directory, is
            where the config that writes it is looked for).
        output_dir: Where the smoke run goes; default smoke/<command>-<config name>, replaced on every run.
        layers: Keep at least this many layers in the tiny models (another config keeps some layers of this
            config's run, as a distilled student keeps its teacher's).

    Raises:
        UserError: a model whose config is not available offline, or a run directory that does not exist yet
            (naming the config that writes it).
    """
    original, cfg = cfg, copy.deepcopy(cfg)
    setattr(cfg, APPLIED, True)
    run = SmokeRun(config=cfg, command=command)
    if output_dir is None:
        label = config_path or (getattr(getattr(cfg, "model", None), "name_or_path", None))
        output_dir, run.replace_output = default_smoke_dir(command, label), True
    cfg.output_dir = str(output_dir)
    shrink = Shrink(run, getattr(cfg.data, "cache_dir", None), config_path, layers, original)
    for name in spec.model_sections:
        section = getattr(cfg, name, None)
        if section is not None:
            shrink.model_section(section, f"{name}.", layers)
    _cut_data(cfg, run, max(TRAIN_ROWS, spec.train_rows(cfg) if spec.train_rows else 0))
    if hasattr(cfg, "train"):
        _smoke_training(cfg, run, spec.trains(cfg))
    for section in flagged_sections(cfg):  # saved in the run's config.yaml: it was a smoke run
        section.smoke = True
    if spec.adjust is not None:
        spec.adjust(cfg, shrink)
    run.notes.append(f"output {cfg.output_dir}" + (" (replaced on every smoke run)" if run.replace_output else ""))
    return run


# ---------------------------------------------------------------- training and data


def _smoke_training(cfg: Any, run: SmokeRun, trains: bool) -> None:
    """A few optimizer steps, each logged; evaluation and checkpoints as configured, once, at the last step."""
    train = cfg.train
    train.smoke = True
    train.resume = None  # a smoke run always starts over in its own directory
    options = train.passthrough
    configured = options.get("max_steps", -1)
    steps = min(configured, STEPS) if configured and configured > 0 else STEPS
    options["max_steps"] = steps
    options["logging_steps"] = 1
    for strategy, every in (("eval_strategy", "eval_steps"), ("save_strategy", "save_steps")):
        value = getattr(options.get(strategy), "value", options.get(strategy))
        if value in ("steps", "epoch"):
            options[strategy], options[every] = "steps", steps
    if trains:
        run.notes.append(f"{steps} training steps, each logged")


def _cut_data(cfg: Any, run: SmokeRun, rows: int) -> None:
    """A seeded shuffle of `rows` training rows and the first EVAL_ROWS validation/test rows (fewer when the
    config asks for fewer)."""
    data = cfg.data
    data.max_train_samples = min(data.max_train_samples or rows, rows)
    data.max_eval_samples = min(data.max_eval_samples or EVAL_ROWS, EVAL_ROWS)
    run.notes.append(f"data cut to {data.max_train_samples} training rows (seeded shuffle) and the first "
                     f"{data.max_eval_samples} validation/test rows")


def cap(obj: Any, attribute: str, limit: int) -> int:
    """Lower a setting to `limit` when it is higher or unset; return the value it now has."""
    value = getattr(obj, attribute)
    setattr(obj, attribute, min(value, limit) if value else limit)
    return getattr(obj, attribute)


# ---------------------------------------------------------------- models


class Shrink:
    """The tools a command's `adjust` uses: models replaced by tiny copies (recording how messages should name
    them), notes, and the layers another config keeps of this run."""

    def __init__(self, run: SmokeRun, cache_dir: str | None, config_path: str | None, layers: int | None = None,
                 original: Any = None):
        self.run, self.cache_dir, self.config_path, self.layers = run, cache_dir, config_path, layers
        self.original = original  # the config as given, before any change (real sizes, settings)
        self.search_from = Path(config_path).parent if config_path else Path.cwd()

    def note(self, text: str) -> None:
        self.run.notes.append(text)

    def model_section(self, section: Any, prefix: str, layers: int | None) -> None:
        """A ModelConfig (or a student section): from_config shrunk, or the model replaced by its tiny copy."""
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
        candidate = producer_smoke_run(producer)
        if candidate is None:
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
    tiny = TinySizes()
    hidden = min(spec.hidden_size, tiny.hidden)
    heads = largest_divisor(hidden, min(spec.num_heads, tiny.heads))
    inner = min(spec.intermediate_size or 4 * spec.hidden_size, tiny.intermediate)
    return dataclasses.replace(spec, num_layers=min(spec.num_layers, max(tiny.layers, layers or 0)),
                               hidden_size=hidden, num_heads=heads, intermediate_size=inner,
                               extra=_fit_extra(spec.extra, hidden, heads))


def _fit_extra(extra: dict, hidden: int, heads: int) -> dict:
    extra = dict(extra)
    if isinstance(extra.get("num_key_value_heads"), int):
        extra["num_key_value_heads"] = largest_divisor(heads, extra["num_key_value_heads"])
    if isinstance(extra.get("head_dim"), int):
        extra["head_dim"] = hidden // heads
    return extra


def shrink_sweep(base: Any, sweep: list[dict]) -> list[dict]:
    """Every size of a size sweep made tiny with its order kept: the k-th smallest distinct depth becomes k
    layers, the k-th smallest width 16k (64 for one width), each capped at the real size; so the sizes stay
    distinct and the scaling fit still has points to fit."""
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
    """An llmkit run directory written by a smoke run: its marker says so (or, for a run from before the marker,
    a section of its saved config has smoke: true)."""
    path = Path(path).expanduser()
    marker = read_marker(path)
    if marker is not None:
        return bool(marker.get("smoke"))
    if not (path / "config.yaml").is_file():
        return False
    try:
        data = read_yaml(path / "config.yaml")
    except UserError:
        return False
    return any(isinstance(section, dict) and section.get("smoke") is True for section in data.values())


def producer_smoke_run(config: Path, root: str | Path = SMOKE_ROOT) -> Path | None:
    """The finished smoke run of a config in the default smoke folder (smoke/<command>-<config name>), if any."""
    found = [p for p in sorted(Path(root).glob(f"*-{Path(config).stem}"))
             if p.is_dir() and is_smoke_run(p) and (p / "metrics.json").is_file()]
    return found[0] if found else None


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def configs_near(search_from: Path) -> Iterator[tuple[Path, dict]]:
    """(path, YAML) of the configs in a config's folder tree (from its parent, e.g. configs/) and in ./configs;
    a bounded look (PRODUCER_SEARCH_LIMIT folders and files), skipping hidden folders, smoke/ and runs/."""
    import os


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
    for path, raw in configs_near(search_from):
        output = raw.get("output_dir")
        if isinstance(output, str) and _same_path(output, ref):
            return path
    return None


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


