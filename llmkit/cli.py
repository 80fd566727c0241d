"""The `llmkit` command line: one thin command per recipe; heavy libraries load only inside commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import typer

from llmkit import commands
from llmkit.errors import ConfigError, UserError

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


def _warn_about_evaluating_on_training_data(cfg: object) -> None:
    """Say when the validation or test data is the training data (the same file, or the same bytes): its figures
    would measure memorisation, not generalisation. A warning, not an error: a smoke test may do it on purpose."""
    from llmkit.data.loading import same_data_as_training

    data = getattr(cfg, "data", None)
    for key in same_data_as_training(data) if data is not None else []:
        typer.echo(f"warning: data.{key} holds the same data as data.train_file: its figures measure how well the "
                   "model remembers its training rows, not how it does on new ones. Give held-out data (or "
                   "data.validation_split).", err=True)


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


def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors, and every library's "
                                                      "warnings and log messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no per-step or evaluation "
                                                            "lines: only the plan and the final results."),
    verbose: bool = typer.Option(False, "--verbose", help="Every metric on the per-step and evaluation lines."),
) -> None:
    import os

    _state["debug"] = debug
    if quiet and verbose:
        _fail("--quiet and --verbose contradict each other; give one of them.", 2)
    # read by llmkit's progress display (training/progress.py), in this process and in the ranks of a launch
    os.environ["LLMKIT_PROGRESS"] = "quiet" if quiet else "verbose" if verbose else "normal"
    from llmkit.models.quiet import show_library_chatter, silence_library_warnings, silence_torchao_import

    if debug:
        show_library_chatter()
    else:
        # Quiet library chatter (load reports, download and loading bars, torchao's import messages) that buries
        # llmkit's own messages; llmkit draws its own training progress. --debug keeps everything.
        silence_torchao_import()  # again: an earlier --debug command in this process took it out
        silence_library_warnings()
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
            _disable_loaded_progress_bars()
    from llmkit.smoke_runner import reopen_library_log_streams

    reopen_library_log_streams()


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


# ---------------------------------------------------------------- the commands of the registry


def run_command(command: commands.Command, config: str, overrides: list[str], *, dry_run: bool = False,
                output_dir: Path | None = None, overwrite: bool = False, smoke: bool = False, **options) -> None:
    """What every registered command does: load the config (or run a FORMS word), apply --output-dir and
    --smoke, check the output directory before any work, run the recipe."""
    forms = command.forms()
    if config in forms:
        forms[config](list(overrides), {"output_dir": output_dir, "overwrite": overwrite, "smoke": smoke,
                                        "dry_run": dry_run, **options})
        return
    from llmkit.config import dump_config
    from llmkit.smoke import prepare as prepare_smoke
    from llmkit.smoke import requested as smoke_requested
    from llmkit.smoke_runner import layers_kept_of

    cfg = commands.load(command.name, Path(config), overrides, **options)
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    _warn_about_remote_code(cfg)
    _warn_about_evaluating_on_training_data(cfg)
    config_path = None if Path(config).is_dir() else config  # eval's short form names a run or model directory
    layers = layers_kept_of(cfg, config_path) if smoke or smoke_requested(cfg) else None
    run = prepare_smoke(cfg, command.name, command.smoke_spec(), enabled=smoke, config_path=config,
                        output_dir=output_dir, layers=layers)
    if run.enabled:
        typer.echo(run.describe())
    if dry_run:
        typer.echo(dump_config(run.config, command.name))
    _check_output(run.config, config_path, run.overwrite(overwrite))
    with run.original_names():
        commands.run(command.name, run.config, config_path=config_path, overwrite=run.overwrite(overwrite),
                     dry_run=dry_run)
    _close_process_group()


def _close_process_group() -> None:
    """A rank of a torchrun / accelerate launch tears its process group down when its command is done: left to
    interpreter exit, gloo's threads can abort a rank after a finished run ("terminate called without an active
    exception", seen under load)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _check_output(cfg, config_path: str | None, overwrite: bool | str) -> None:
    """The output directory's checks, before any data or model work (which a taken directory would waste);
    --dry-run runs them too."""
    from llmkit.training.rundir import check_output_dir, input_paths

    if cfg.output_dir:
        resume = getattr(getattr(cfg, "train", None), "resume", None)
        check_output_dir(Path(cfg.output_dir), overwrite=overwrite, resume=resume,
                         inputs=input_paths(cfg, config_path))


def _command_function(command: commands.Command) -> Callable[..., None]:
    """A Typer command for a registered command: CONFIG, overrides and the shared options, plus its own."""
    import inspect

    def body(config: str, overrides: list[str] | None, dry_run: bool, output_dir: Path | None, overwrite: bool,
             smoke: bool, **options) -> None:
        guarded(lambda: run_command(command, config, list(overrides or []), dry_run=dry_run, output_dir=output_dir,
                                    overwrite=overwrite, smoke=smoke, **options))

    shared = [
        ("config", str, typer.Argument(..., help=command.argument_help + ".")),
        ("overrides", list[str] | None, typer.Argument(None, help=OVERRIDES_HELP, show_default=False)),
        ("dry_run", bool, typer.Option(False, "--dry-run", help="Validate, load data, tokenizer and model(s), run "
                                                                "every check and print the plan; write nothing.")),
        ("output_dir", Path | None, typer.Option(None, "--output-dir", "-o", help="Run directory (overrides "
                                                                                  "output_dir).")),
        ("overwrite", bool, typer.Option(False, "--overwrite", help="Replace an existing run directory (only one "
                                                                    "llmkit created).")),
        ("smoke", bool, typer.Option(False, "--smoke", help=command.smoke_help or SMOKE_HELP)),
    ]
    own = [(o.name, o.type | None, typer.Option(o.default, f"--{o.name.replace('_', '-')}", help=o.help))
           for o in command.options]
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, annotation, default in shared + own]
    body.__signature__ = inspect.Signature(params)
    body.__annotations__ = {name: annotation for name, annotation, _ in shared + own}
    body.__doc__ = command.help
    return body


def init(
    command: str = typer.Argument(..., help=f"Which command's config to write: {', '.join(commands.COMMANDS)}."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write it (default: "
                                                                       "COMMAND.yaml)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a commented starter config, and beside it .llmkit-schema/COMMAND.schema.json, the JSON Schema its
    `# yaml-language-server: $schema=` line points editors at (completion and checks while typing; that file is
    generated, and replaced with the current schema every time; a file there that llmkit did not write is refused)."""

    def body():
        from llmkit.config.json_schema import modeline, schema_path
        from llmkit.config.starter import starter_yaml

        if command not in commands.COMMANDS:
            raise UserError(f"init: unknown command {command!r}; choose one of: {', '.join(commands.COMMANDS)}.")
        path = output or Path(f"{command}.yaml")
        if path.exists() and not force:
            raise UserError(f"init: {path} already exists; nothing was changed. Use --force to replace it, or "
                            "--output for another file.")
        if not path.parent.is_dir():
            raise UserError(f"init: the folder {path.parent} does not exist; create it, or give --output a path in "
                            "an existing folder.")
        title, _, rest = starter_yaml(command, commands.get(command).config_cls()).partition("\n")
        schema_file = schema_path(path, command)
        _write_schema(command, schema_file, "init")
        _write_text(path, f"{title}\n{modeline(command)}\n{rest}", "init")
        typer.echo(f"wrote {path}; run it with: llmkit {command} {path}")
        typer.echo(f"wrote {schema_file} (for editors: completion and checks while typing, see docs/editor.md)")

    guarded(body)


def _write_text(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise UserError(f"{what}: cannot write {path}: {e.strerror}. Check the path and its permissions.") from None


def _write_schema(command: str, path: Path, what: str) -> None:
    """The JSON Schema of `command`'s config into `path` (its folder made when missing), replacing the file."""
    from llmkit.config.json_schema import dumps, json_schema

    text = dumps(json_schema(command, commands.get(command).config_cls()))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what}: cannot create the folder {path.parent}: {e.strerror}.") from None
    if path.is_dir():
        raise UserError(f"{what}: {path} is a directory; give a file path for the schema.")
    if path.exists() and not _generated_schema(path):  # only a schema llmkit wrote is replaced: never a user file
        raise UserError(f"{what}: {path} exists and is not a schema llmkit wrote; nothing was changed. Give another "
                        "path, or move that file away first.")
    _write_text(path, text, what)


def _generated_schema(path: Path) -> bool:
    import json

    try:
        title = json.loads(path.read_text(encoding="utf-8")).get("title", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(title, str) and title.startswith("llmkit ") and title.endswith(" config")


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
        name = commands.infer_command(config, command)
        commands.load(name, config, overrides or [])
        typer.echo(f"{config}: valid {name} config")

    guarded(body)


def config_schema(
    command: str = typer.Argument(..., help=f"Which command's config: {', '.join(commands.COMMANDS)}."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write it to this file instead of printing "
                                                                       "it (replaced only if llmkit wrote it)."),
) -> None:
    """Print the JSON Schema (draft-07) of a command's config, for editors: key completion, help on hover and
    type errors while typing (yaml-language-server, e.g. VS Code's YAML extension; see docs/editor.md)."""

    def body():
        from llmkit.config.json_schema import dumps, json_schema

        if command not in commands.COMMANDS:
            raise UserError(f"config schema: unknown command {command!r}; choose one of: "
                            f"{', '.join(commands.COMMANDS)}.")
        if output is None:
            typer.echo(dumps(json_schema(command, commands.get(command).config_cls())), nl=False)
            return
        if not output.parent.is_dir():
            raise UserError(f"config schema: the folder {output.parent} does not exist; create it first.")
        _write_schema(command, output, "config schema")
        typer.echo(f"wrote {output}", err=True)

    guarded(body)


def config_show(
    config: Path = typer.Argument(..., help="YAML config."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    command: str | None = typer.Option(None, "--command", help="The command the config is for."),
) -> None:
    """Print the resolved config (defaults and overrides applied)."""

    def body():
        from llmkit.config import dump_config

        name = commands.infer_command(config, command)
        typer.echo(dump_config(commands.load(name, config, overrides or []), name), nl=False)

    guarded(body)


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

        from llmkit import smoke_runner

        start = time.perf_counter()
        results = smoke_runner.run_configs(list(paths), output_dir, verbose=verbose, progress=typer.echo)
        typer.echo("\n" + smoke_runner.format_table(results) + "\n")
        typer.echo(smoke_runner.summary(results, time.perf_counter() - start))
        failed = [r for r in results if not r.passed]
        for r in failed:
            typer.echo(f"\nFAIL {r.path} ({r.command or '?'}): {r.error}\n  log: {r.log}")
        if failed:
            raise typer.Exit(1)

    guarded(body)


def info() -> None:
    """Print versions, the device, and whether bf16 is fast here."""
    from llmkit.info import collect_info

    def body() -> None:
        for key, value in collect_info().items():
            typer.echo(f"{key:>22}: {value}")

    guarded(body)


def version() -> None:
    """Print llmkit's version."""
    from llmkit.version import __version__

    typer.echo(__version__)


def build_app() -> typer.Typer:
    """The CLI: one command per registered command (in the registry's order), then the helpers."""
    built = typer.Typer(help="Train and evaluate language models on the Hugging Face stack, driven by YAML configs.",
                        no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                        rich_markup_mode=None)
    built.callback()(main_options)
    for command in commands.COMMANDS.values():
        built.command(command.name, help=command.help)(_command_function(command))
    built.command()(init)
    config_app = typer.Typer(help="Check and print configs, and their JSON Schema for editors.", no_args_is_help=True)
    config_app.command("validate")(config_validate)
    config_app.command("show")(config_show)
    config_app.command("schema")(config_schema)
    built.add_typer(config_app, name="config")
    built.command("smoke")(smoke_command)
    built.command()(info)
    built.command()(version)
    return built


app = build_app()


def main() -> None:
    app(prog_name="llmkit")


if __name__ == "__main__":
    sys.exit(main())
