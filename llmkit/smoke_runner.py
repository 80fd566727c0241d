"""`llmkit smoke PATH...`: many configs in smoke mode, in dependency order, with a pass/fail table for CI.

A config whose model or teacher is another config's output_dir (a distilled student's teacher, an eval of a run)
gets that config's smoke run instead, and a producer keeps as many layers as the configs reading it need (what
each command reads comes from its SmokeSpec.references). Each run is isolated: a failing config never stops or
changes the next one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import commands
from llmkit.config.launch import is_accelerate_config
from llmkit.config.loader import read_yaml
from llmkit.errors import UserError
from llmkit.smoke import SMOKE_ROOT, _relative, _same_path, apply_smoke, configs_near, default_smoke_dir
from llmkit.training.rundir import REPLACE_SMOKE

TABLE_ERROR_CHARS = 160  # of an error's first line in the table (the full message follows it)


@dataclass
class SmokeJob:
    """One config of a smoke suite: its command, where its smoke run goes, what it needs from other configs."""

    path: Path
    command: str | None = None
    output: Path | None = None  # its smoke run directory
    real_output: str | None = None  # output_dir as configured
    overrides: list[str] = field(default_factory=list)  # references to other configs' runs -> their smoke runs
    needs: list[int] = field(default_factory=list)
    layers: int | None = None  # layers a config reading this one's run keeps of its model (a distilled student)
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
    """Jobs in dependency order: each config after the configs whose output_dir it reads (its model, tokenizer
    or teacher, as its command's SmokeSpec.references say); those references point at the producers' smoke
    runs."""
    jobs = []
    taken: set[str] = set()
    for path in paths:
        job = SmokeJob(path=path)
        try:
            job.raw = read_yaml(path)
            job.command = commands.infer_command(path, None)
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
        for key, ref, layers in references(job.command, job.raw):
            producer = next((j for j, other in enumerate(jobs) if j != i and other.real_output
                             and not ref.startswith("pkg:") and _same_path(other.real_output, ref)), None)
            if producer is None:
                continue
            job.needs.append(producer)
            job.overrides.append(f"{key}={jobs[producer].output}")
            if layers is not None:
                jobs[producer].layers = max(jobs[producer].layers or 0, layers)
    return _in_dependency_order(jobs)


def references(command: str | None, raw: dict) -> list[tuple[str, str, int | None]]:
    """(key, value, layers kept) of every setting of a raw config that may name another config's run."""
    if command is None:
        return []
    try:
        return commands.get(command).smoke_spec().references(raw)
    except (AttributeError, KeyError, TypeError, ValueError):  # a config YAML cannot describe: no references
        return []


def layers_for_readers(output_dir: str, search_from: Path) -> int | None:
    """The layers the configs near this one keep of the run at `output_dir` (a distilled student keeps some of
    its teacher's), or None."""
    needed = []
    for path, raw in configs_near(search_from):
        command = commands.infer(raw, path)
        needed += [layers for _, ref, layers in references(command, raw)
                   if layers is not None and _same_path(ref, output_dir)]
    return max(needed) if needed else None


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


def run_config(command: str, path: Path, overrides: list[str] = (), output_dir: Path | None = None,
               layers: int | None = None, announce: bool = True) -> dict:
    """Run one config in smoke mode in this process, as `llmkit COMMAND PATH --smoke` does; return its metrics."""
    cfg = commands.load(command, path, list(overrides))
    return run_loaded(command, cfg, str(path), output_dir, layers, announce)


def run_loaded(command: str, cfg: Any, config_path: str | None, output_dir: Path | None = None,
               layers: int | None = None, announce: bool = False) -> dict:
    """Run a loaded config in smoke mode in this process; return its metrics."""
    if layers is None:
        layers = layers_kept_of(cfg, config_path)
    run = apply_smoke(cfg, command, commands.get(command).smoke_spec(), config_path=config_path,
                      output_dir=output_dir, layers=layers)
    if announce:
        print(run.describe(), flush=True)
    with run.original_names():  # smoke replaces only an earlier smoke run, never a real run in its place
        return commands.run(command, run.config, config_path=config_path, overwrite=REPLACE_SMOKE)


def layers_kept_of(cfg: Any, config_path: str | None) -> int | None:
    """The layers the configs beside this one keep of its run (its output_dir), or None."""
    if not config_path or not cfg.output_dir or not Path(config_path).is_file():
        return None
    return layers_for_readers(cfg.output_dir, Path(config_path).parent)


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
    reopen_library_log_streams()


def reopen_library_log_streams() -> None:
    """datasets and transformers log through a StreamHandler bound to the sys.stderr of the moment they were
    first used. Run in-process (typer's CliRunner, a notebook, one config after another here), that stream may be
    a capture closed since, and a later log line then prints '--- Logging error ---' with a traceback instead:
    point such handlers at the current stderr."""
    import logging
    import sys

    for name in ("datasets", "transformers"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                with handler.lock:  # not setStream(): it flushes the closed stream first, which raises
                    handler.stream = sys.stderr


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

