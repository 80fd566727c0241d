"""The `llmkit` command line: one thin command per recipe; heavy libraries load only inside commands."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from llmkit.errors import ConfigError, UserError

# command -> (recipe module, its config class, the section that identifies its configs)
RECIPES = {
    "pretrain": ("llmkit.recipes.pretrain", "PretrainConfig", "pretrain"),
    "finetune": ("llmkit.recipes.finetune", "FinetuneConfig", "task"),
    "adapter": ("llmkit.recipes.adapter", "AdapterConfig", "adapter"),
    "prompt": ("llmkit.recipes.prompt", "PromptConfig", "prompt"),
    "distill": ("llmkit.recipes.distill", "DistillConfig", "distill"),
    "eval": ("llmkit.recipes.evaluation", "EvalConfig", "eval"),
}

app = typer.Typer(
    help="Train and evaluate language models on the Hugging Face stack, driven by YAML configs.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)
config_app = typer.Typer(help="Check and print configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

_state = {"debug": False}

OVERRIDES_HELP = "Dotted overrides, e.g. train.learning_rate=3e-5 data.max_train_samples=1000."
SMOKE_HELP = ("Smoke mode: the same config on a tiny random copy of its model (same family and tokenizer), 128 "
              "training / 32 evaluation rows and 3 steps, output in smoke/ (also train.smoke: true).")


def _fail(message: str, code: int) -> None:
    import os

    from llmkit.config.secrets import scrub

    rank = os.environ.get("RANK", "0")  # set by torchrun / accelerate launch: say which process it was
    where = "" if rank == "0" else f" (rank {rank})"
    typer.echo(f"error{where}: {scrub(message)}", err=True)  # a message may quote a value: never a token from the env
    raise typer.Exit(code)


def _warn_about_remote_code(cfg: object) -> None:
    """Say once per run, before anything loads, that trust_remote_code lets the model repository run code here."""
    from llmkit.config.schema import to_dict
    from llmkit.models.safety import remote_code_warning

    message = remote_code_warning(to_dict(cfg))
    if message:
        typer.echo(f"warning: {message}", err=True)


def guarded(fn: Callable[[], object]) -> object:
    """Run a command body: user mistakes print one clear message and exit 2 (traceback only with --debug)."""
    try:
        return fn()
    except UserError as e:
        if _state["debug"]:
            raise
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted.", 130)


def recipe_config_class(command: str) -> type:
    module, cls_name, _ = RECIPES[command]
    return getattr(importlib.import_module(module), cls_name)


def _load(command: str, config: Path | None, overrides: list[str]):
    from llmkit.config import load_config

    return load_config(recipe_config_class(command), config, overrides or [], foreign_sections=_foreign(command))


def _foreign(command: str) -> dict[str, str]:
    """The sections that identify other commands' configs (`prompt:` -> llmkit prompt), for the message about a
    section that belongs to another command."""
    return {section: f"llmkit {name}" for name, (_, _, section) in RECIPES.items() if name != command}


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    _state["debug"] = debug
    if not debug:
        import os

        # Quiet library chatter (load reports, per-file progress bars) that buries llmkit's own messages;
        # the Trainer's progress bar and logs stay. --debug keeps everything.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
            _disable_loaded_progress_bars()
    _reopen_library_log_streams()


def _disable_loaded_progress_bars() -> None:
    """The variables above reach libraries imported later; one imported already (the CLI run in-process, from a
    test or a notebook) read them at its import, so tell it directly. transformers' weight-loading and
    shard-writing bars follow huggingface_hub's switch when imported after it, and their own flag otherwise."""
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _reopen_library_log_streams() -> None:
    """datasets and transformers log through a StreamHandler bound to the sys.stderr of the moment they were
    first used. Run in-process (typer's CliRunner, a notebook), that stream may be a capture closed since, and a
    later log line then prints '--- Logging error ---' with a traceback instead: point such handlers at the
    current stderr."""
    import logging

    for name in ("datasets", "transformers"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                with handler.lock:  # not setStream(): it flushes the closed stream first, which raises
                    handler.stream = sys.stderr


@app.command()
def pretrain(
    config: Path = typer.Argument(..., help="YAML config (see configs/pretrain/ or `llmkit init pretrain`)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, prepare tokenizer/data, build the model(s), "
                                                          "print the plan; do not train."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run directory (overrides "
                                                                                "output_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
) -> None:
    """Pretrain a language model (causal or masked) from scratch or continue pretraining; optional size sweep."""
    _run_recipe("pretrain", config, overrides, dry_run, output_dir, overwrite, smoke)


def _run_recipe(command: str, config: Path, overrides: list[str] | None, dry_run: bool, output_dir: Path | None,
                overwrite: bool, smoke: bool = False) -> None:
    """Load the config, apply --output-dir (and --smoke), and run the command's recipe (training commands share
    this)."""

    def body():
        from llmkit.config import dump_config
        from llmkit.smoke import prepare as prepare_smoke

        cfg = _load(command, config, overrides or [])
        if output_dir is not None:
            cfg.output_dir = str(output_dir)
        _warn_about_remote_code(cfg)
        run = prepare_smoke(cfg, command, enabled=smoke, config_path=str(config), output_dir=output_dir)
        if run.enabled:
            typer.echo(run.describe())
        if dry_run:
            typer.echo(dump_config(run.config, command))
        _check_output(run.config, str(config), run.overwrite(overwrite))
        with run.original_names():
            importlib.import_module(RECIPES[command][0]).run(run.config, config_path=str(config),
                                                             overwrite=run.overwrite(overwrite), dry_run=dry_run)

    guarded(body)


def _check_output(cfg, config_path: str | None, overwrite: bool | str) -> None:
    """The output directory's checks, before any data or model work (which a taken directory would waste);
    --dry-run runs them too."""
    from llmkit.training.rundir import check_output_dir, input_paths

    if cfg.output_dir:
        resume = getattr(getattr(cfg, "train", None), "resume", None)
        check_output_dir(Path(cfg.output_dir), overwrite=overwrite, resume=resume,
                         inputs=input_paths(cfg, config_path))


@app.command()
def finetune(
    config: Path = typer.Argument(..., help="YAML config (see configs/finetune/ or `llmkit init finetune`)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, load data/tokenizer/model, print the plan; "
                                                          "do not train."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run directory (overrides "
                                                                                "output_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
) -> None:
    """Fine-tune a model: sequence or token classification, or causal-LM instruction tuning (SFT)."""
    _run_recipe("finetune", config, overrides, dry_run, output_dir, overwrite, smoke)


@app.command()
def adapter(
    config: str = typer.Argument(..., help="YAML config (see configs/adapter/ or `llmkit init adapter`); or `merge` "
                                           "followed by an adapter run directory."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP + " After `merge`: the run directory.",
                                                 show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, load data/tokenizer/model, attach the adapter, "
                                                          "print the plan; do not train."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run directory (overrides "
                                                                                "output_dir)."),
    output: Path | None = typer.Option(None, "--output", help="merge: where to write the merged model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run (or --output) directory."),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
) -> None:
    """Train an adapter (LoRA or any PEFT method, or bottleneck adapters) on a finetune task; `adapter merge RUN
    --output DIR` writes a standalone model with a LoRA-family adapter merged in."""
    if config != "merge":
        _run_recipe("adapter", Path(config), overrides, dry_run, output_dir, overwrite, smoke)
        return

    def merge():
        from llmkit.models.adapters import merge_adapter
        from llmkit.training import rundir

        if not overrides or len(overrides) != 1 or output is None:
            raise UserError("adapter merge: give one adapter run directory and --output DIR, e.g. llmkit adapter "
                            "merge runs/minilm-sst2-lora --output merged/minilm-sst2.")
        inputs = _merge_inputs(overrides[0])
        rundir.check_output_dir(output, overwrite=overwrite, inputs=inputs, key="--output")  # before loading

        def claim(path: Path) -> Path:
            return rundir.prepare_run_dir(path, overwrite, None, command="adapter merge", inputs=inputs,
                                          key="--output")

        with rundir.claims_released():
            meta = merge_adapter(overrides[0], output, prepare_output=claim)
        typer.echo(f"merged the {meta['method']} adapter {meta['name']!r} into {meta['base_model']}; wrote {output} "
                   "(loads with transformers' from_pretrained, no PEFT needed)")

    guarded(merge)


@app.command()
def prompt(
    config: Path = typer.Argument(..., help="YAML config (see configs/prompt/ or `llmkit init prompt`)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, load model/data, render an example prompt, "
                                                          "print the plan; do not score or train."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run directory (overrides "
                                                                                "output_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
) -> None:
    """Prompt-based classification: cloze templates + verbalizers; zero-shot, few-shot, in-context, soft prompts."""
    _run_recipe("prompt", config, overrides, dry_run, output_dir, overwrite, smoke)


@app.command()
def distill(
    config: Path = typer.Argument(..., help="YAML config (see configs/distill/ or `llmkit init distill`)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, load teacher/student/data, print the plan; "
                                                          "do not train."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run directory (overrides "
                                                                                "output_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
) -> None:
    """Distil a teacher (model or run directory) into a smaller student: soft labels, hidden states, extra texts."""
    _run_recipe("distill", config, overrides, dry_run, output_dir, overwrite, smoke)


@app.command("eval")
def eval_command(
    target: str = typer.Argument(..., help="A YAML config; or a run/model directory (short form, with --data); "
                                           "or `compare` followed by run directories."),
    args: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP + " After `compare`: the run "
                                                          "directories.", show_default=False),
    data: Path | None = typer.Option(None, "--data", help="The data to evaluate (sets data.validation_file)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Where eval.json and the report "
                                                                                "go."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, load the model and the data, run every check; "
                                                          "do not score or write anything."),
) -> None:
    """Evaluate a model or run directory (classification metrics, perplexity); `eval compare RUN...` tabulates runs."""

    def body():
        from llmkit.recipes import evaluation
        from llmkit.smoke import prepare as prepare_smoke

        if target == "compare":
            if not args:
                raise UserError("eval compare: give one or more run directories.")
            typer.echo(evaluation.compare_runs(list(args)))
            return
        cfg = _load_eval_config(Path(target), list(args or []), data)
        if output_dir is not None:
            cfg.output_dir = str(output_dir)
        _warn_about_remote_code(cfg)
        config_path = None if Path(target).is_dir() else target
        run = prepare_smoke(cfg, "eval", enabled=smoke, config_path=config_path or target, output_dir=output_dir)
        if run.enabled:
            typer.echo(run.describe())
        _check_output(run.config, config_path, run.overwrite(overwrite))
        with run.original_names():
            evaluation.run(run.config, config_path=config_path, overwrite=run.overwrite(overwrite), dry_run=dry_run)

    guarded(body)


def _load_eval_config(target: Path, overrides: list[str], data: Path | None):
    """`llmkit eval CONFIG [k=v]` or the short form `llmkit eval RUN_DIR --data PATH [k=v]`."""
    from llmkit.config import apply_overrides, load_config, read_yaml
    from llmkit.recipes.evaluation import EvalConfig, inherit_from_run

    if not target.exists():
        raise UserError(f"eval: {target} does not exist; give a YAML config, a run or model directory (with "
                        "--data), or `compare` followed by run directories.")
    if target.is_dir() and not _holds_model(target):
        raise UserError(f"eval: {target} is a directory but not a model directory (no config.json) nor an llmkit "
                        "run directory (no config.yaml); give a YAML config file, or a model or run directory "
                        "with --data.")
    raw = {"model": {"name_or_path": str(target)}} if target.is_dir() else read_yaml(target)
    if data is not None:
        overrides = [f"data.validation_file={data}", *overrides]
    raw = inherit_from_run(apply_overrides(raw, overrides))
    return load_config(EvalConfig, None, data=raw, foreign_sections=_foreign("eval"))


def _merge_inputs(reference: str) -> list[tuple[str, Path]]:
    """What `adapter merge` reads: the adapter run and, when it is a local folder, its base model."""
    from llmkit.models.adapters import find_adapter_dir, read_metadata

    inputs = [("adapter run", Path(reference).expanduser().resolve())]
    adapter_dir = find_adapter_dir(reference)
    base = read_metadata(adapter_dir).get("base_model_path") if adapter_dir is not None else None
    if isinstance(base, str) and Path(base).is_dir():
        inputs.append(("base model", Path(base).resolve()))
    return inputs


def _holds_model(directory: Path) -> bool:
    """A transformers model folder, an llmkit run directory or an adapter folder (what eval's short form takes)."""
    from llmkit.models.adapters import find_adapter_dir

    return ((directory / "config.json").is_file() or (directory / "config.yaml").is_file()
            or find_adapter_dir(directory) is not None)


@app.command()
def init(
    command: str = typer.Argument(..., help=f"Which command's config to write: {', '.join(RECIPES)}."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write it (default: "
                                                                       "COMMAND.yaml)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a commented starter config."""

    def body():
        from llmkit.config.starter import starter_yaml

        if command not in RECIPES:
            raise UserError(f"init: unknown command {command!r}; choose one of: {', '.join(RECIPES)}.")
        path = output or Path(f"{command}.yaml")
        if path.exists() and not force:
            raise UserError(f"init: {path} already exists; nothing was changed. Use --force to replace it, or "
                            "--output for another file.")
        path.write_text(starter_yaml(command, recipe_config_class(command)))
        typer.echo(f"wrote {path}; run it with: llmkit {command} {path}")

    guarded(body)


def _infer_command(config: Path, command: str | None) -> str:
    from llmkit.config import read_yaml

    if command:
        if command not in RECIPES:
            raise UserError(f"--command: unknown command {command!r}; choose one of: {', '.join(RECIPES)}.")
        return command
    data = read_yaml(config)
    found = [name for name, (_, _, section) in RECIPES.items() if section in data]
    if len(found) > 1:  # an adapter config has finetune's `task:` too: keep the command whose config holds all
        found = [name for name in found if all(RECIPES[other][2] in recipe_config_class(name).__dataclass_fields__
                                               for other in found)]
    if len(found) == 1:
        return found[0]
    parent = config.resolve().parent.name
    if parent in RECIPES:
        return parent
    raise UserError(f"{config}: cannot tell which command this config is for; pass --command "
                    f"({', '.join(RECIPES)}).")


@config_app.command("validate")
def config_validate(
    config: Path = typer.Argument(..., help="YAML config to check."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    command: str | None = typer.Option(None, "--command", help="The command the config is for (default: "
                                                                   "inferred from its sections)."),
) -> None:
    """Check a config: keys, types, files and settings, all problems at once."""

    def body():
        from llmkit.config import read_yaml
        from llmkit.config.launch import check_accelerate_config, is_accelerate_config

        if not command and is_accelerate_config(read_yaml(config)):  # configs/accelerate/*.yaml
            issues = check_accelerate_config(config)
            if issues:
                raise ConfigError(issues, source=str(config))
            typer.echo(f"{config}: valid accelerate config (accelerate launch --config_file {config} -m llmkit ...)")
            return
        name = _infer_command(config, command)
        _load(name, config, overrides or [])
        typer.echo(f"{config}: valid {name} config")

    guarded(body)


@config_app.command("show")
def config_show(
    config: Path = typer.Argument(..., help="YAML config."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    command: str | None = typer.Option(None, "--command", help="The command the config is for."),
) -> None:
    """Print the resolved config (defaults and overrides applied)."""

    def body():
        from llmkit.config import dump_config

        name = _infer_command(config, command)
        typer.echo(dump_config(_load(name, config, overrides or []), name), nl=False)

    guarded(body)


@app.command("smoke")
def smoke_command(
    paths: list[Path] = typer.Argument(..., help="Config files, or folders searched recursively for *.yaml "
                                                 "(accelerate launch configs are skipped)."),
    output_dir: Path = typer.Option(Path("smoke"), "--output-dir", "-o", help="Where the smoke runs and their logs "
                                                                                "go (each replaced every time)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show each run's output (default: only in "
                                                                "OUTPUT_DIR/<run>.log)."),
) -> None:
    """Run every config in smoke mode (tiny models, a few steps) in dependency order: a pass/fail table with the
    time of each; exit code 1 if any failed. The one command for CI."""

    def body():
        import time

        from llmkit import smoke

        start = time.perf_counter()
        results = smoke.run_configs(list(paths), output_dir, verbose=verbose, progress=typer.echo)
        typer.echo("\n" + smoke.format_table(results) + "\n")
        typer.echo(smoke.summary(results, time.perf_counter() - start))
        failed = [r for r in results if not r.passed]
        for r in failed:
            typer.echo(f"\nFAIL {r.path} ({r.command or '?'}): {r.error}\n  log: {r.log}")
        if failed:
            raise typer.Exit(1)

    guarded(body)


@app.command()
def info() -> None:
    """Print versions, the device, and whether bf16 is fast here."""
    from llmkit.info import collect_info

    for key, value in collect_info().items():
        typer.echo(f"{key:>22}: {value}")


@app.command()
def version() -> None:
    """Print llmkit's version."""
    import llmkit

    typer.echo(llmkit.__version__)


def main() -> None:
    app(prog_name="llmkit")


if __name__ == "__main__":
    sys.exit(main())
