"""The run directory: creation rules, resume lookup, and the files every run writes."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.config.loader import read_yaml
from llmkit.config.schema import to_dict
from llmkit.config.secrets import redact_argv, redact_config, scrub
from llmkit.errors import UserError, first_line
from llmkit.models.adapters import ADAPTER_DIR, find_adapter_dir

CHECKPOINTS = "checkpoints"


def default_run_dir(command: str, config_path: str | None) -> Path:
    """runs/<command>-<config name>-<timestamp>, with -2, -3, ... when a run started in the same second took it."""
    name = Path(config_path).stem if config_path else "run"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    first = Path("runs") / f"{command}-{name}-{stamp}"
    path, copies = first, 1
    while path.exists():
        copies += 1
        path = first.with_name(f"{first.name}-{copies}")
    return path


# ---------------------------------------------------------------- what a command may write, and where

MARKER = ".llmkit-run"  # written when llmkit creates a run directory: the only kind --overwrite may delete
LOCK = ".llmkit-lock"  # held while a process writes into the directory
REPLACE_SMOKE = "smoke"  # an `overwrite` value: replace the directory only if it holds a smoke run
TRAINING_OUTPUTS = ("checkpoints", "model", "adapter", "metrics.json", "eval.json", "log_history.jsonl", "sweep")
_SKIPPED_KEYS = ("output_dir", "train.logging_dir", "data.cache_dir")  # written by the run, not read by it


def input_paths(cfg: Any, config_path: str | Path | None = None) -> list[tuple[str, Path]]:
    """Every existing file or directory a config points to, with its key (resolved): the config file, model,
    tokenizer and teacher folders, data files (relative to data.data_dir as the loader reads them), a resume
    checkpoint. Found by walking every string in the config, so a command's new keys are covered without
    being listed here."""
    data_dir = getattr(getattr(cfg, "data", None), "data_dir", None)
    found: list[tuple[str, Path]] = []
    if config_path:
        found.append(("the config file", Path(config_path)))
    for key, value in _string_leaves(to_dict(cfg)):
        if key in _SKIPPED_KEYS or key.endswith("data_dir") or value.startswith("pkg:") or "://" in value:
            continue
        candidates = [Path(value).expanduser()]
        if key.startswith("data.") and data_dir:
            candidates.append(Path(data_dir).expanduser() / value)
        for candidate in candidates:
            matches = sorted(candidate.parent.glob(candidate.name)) if any(c in value for c in "*?[") else \
                [candidate]
            found += [(key, match) for match in matches[:1000] if _exists(match)]
    out, seen = [], set()
    for key, path in found:
        path = path.resolve()
        if path not in seen:
            seen.add(path)
            out.append((key, path))
    return out


def _string_leaves(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [leaf for k, v in data.items() for leaf in _string_leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, (list, tuple)):
        return [leaf for item in data for leaf in _string_leaves(item, prefix)]
    return [(prefix, data)] if isinstance(data, str) and data and len(data) < 4096 else []


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the OS, a NUL byte
        return False


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def read_marker(path: Path) -> dict | None:
    """The run marker of `path` ({"command", "smoke", ...}), or None when llmkit did not create it."""
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _legacy_run(path: Path) -> bool:
    """A run directory written by an llmkit from before the marker: its config.yaml carries llmkit's header."""
    try:
        with (path / "config.yaml").open(encoding="utf-8") as fh:
            return fh.readline().startswith("# Resolved by llmkit")
    except (OSError, UnicodeDecodeError):
        return False


def _contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK) if path.is_dir() else []


def check_output_dir(path: Path, *, overwrite: bool | str = False, resume: str | None = None,
                     inputs: list[tuple[str, Path]] = (), key: str = "output_dir") -> bool:
    """Every check of a run directory that can run before anything is written; True when it has content.

    Refused: a path that is (or is under) a file, or not writable; a directory that is one of the command's
    inputs; an existing directory with content unless `resume` (an llmkit run that has not finished) or
    `overwrite` (an llmkit run: it holds the marker; never the current directory or one above it, the home
    directory, or a directory holding an input; with REPLACE_SMOKE only a smoke run); a directory another live
    llmkit process is writing into.
    """
    path = path.expanduser().resolve()
    _check_writable(path, key)
    for name, source in inputs:
        if source == path:
            raise UserError(f"{key}: {path} is also {_input_name(name)}, which this command reads; the output of a "
                            "command can never be one of its inputs. Nothing was changed. Choose another "
                            "--output-dir.")
    content = _contents(path)
    if not content:
        _check_lock(path, key)
        return False
    _check_lock(path, key)
    if resume:
        _check_resumable(path, resume, key)
    elif overwrite:
        _check_replaceable(path, overwrite, inputs, key)
    else:
        raise UserError(f"{key}: {path} already exists and is not empty; nothing was changed. Use --overwrite to "
                        "replace it (only a run llmkit created) or --output-dir for a new one; a training run that "
                        "stopped continues with train.resume=auto." + _stale_note(path))
    return True


def _input_name(name: str) -> str:
    return name if name.startswith("the ") else f"the {name} input"


def _check_writable(path: Path, key: str) -> None:
    """The path is a directory or can become one, and its nearest existing folder is writable."""
    if len(path.name.encode()) > 255:
        raise UserError(f"{key}: the name {path.name[:40]}... is {len(path.name.encode())} bytes long; file "
                        "systems allow 255. Choose a shorter --output-dir.")
    if _exists(path) and not path.is_dir():
        raise UserError(f"{key}: {path} exists and is a file, not a directory. Choose another --output-dir.")
    existing = path
    while not _exists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{key}: {existing} is a file, so {path} cannot be created under it. Choose another "
                        "--output-dir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}: {existing} is not writable by this user, so {path} cannot be "
                        f"{'written' if existing == path else 'created'}. Choose a directory you can write to.")


def _check_resumable(path: Path, resume: str, key: str) -> None:
    if read_marker(path) is None and not _legacy_run(path):
        raise UserError(f"train.resume: {path} is not an llmkit run directory (it holds {_listing(path)} and no "
                        f"{MARKER}), so there is nothing to resume and llmkit will not write into it. Choose "
                        "another --output-dir.")
    if resume != "auto":
        return
    ckpt_dir = path / CHECKPOINTS
    has_checkpoint = ckpt_dir.is_dir() and bool(checkpoints_newest_first(ckpt_dir))
    # A size sweep resumes member by member (finished sizes are kept, not trained again).
    if (path / "metrics.json").is_file() and not has_checkpoint and not (path / "sweep").is_dir():
        step = finished_step(path)
        at = f" at step {step}" if step is not None else ""
        raise UserError(f"train.resume=auto: {path} holds a finished run (finished{at}, metrics.json written) and "
                        "no checkpoint to continue from; nothing was changed. Use --overwrite to train it again, "
                        "or --output-dir for a new run.")


def finished_step(path: Path) -> int | None:
    """The last step in a run's log_history.jsonl (None when it cannot be read)."""
    try:
        lines = (path / "log_history.jsonl").read_text().splitlines()
        return max(int(json.loads(line).get("step", 0)) for line in lines if line.strip())
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _check_replaceable(path: Path, overwrite: bool | str, inputs: list[tuple[str, Path]], key: str) -> None:
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if _within(cwd, path):
        where = "the current directory" if cwd == path else f"a directory above the current one ({cwd})"
        raise UserError(f"{key}: {path} is {where}; --overwrite never deletes it. Nothing was changed. Choose "
                        "another --output-dir.")
    if path == home or path == Path(path.anchor):
        raise UserError(f"{key}: {path} is the {'home' if path == home else 'root'} directory; --overwrite never "
                        "deletes it. Nothing was changed. Choose another --output-dir.")
    for name, source in inputs:
        if _within(source, path):
            raise UserError(f"{key}: {path} holds {_input_name(name)} ({source}), which this command reads; "
                            "--overwrite would delete it. Nothing was changed. Choose another --output-dir, or "
                            "move that input out of it.")
    marker = read_marker(path)
    if marker is None:
        raise UserError(f"{key}: {path} was not created by llmkit (it holds {_listing(path)} and no {MARKER} "
                        "marker), and --overwrite deletes only llmkit's own run directories. Nothing was changed. "
                        "Choose another --output-dir, or delete it yourself if it is no longer needed.")
    if overwrite == REPLACE_SMOKE and not marker.get("smoke"):
        raise UserError(f"{key}: {path} holds a real {marker.get('command', 'llmkit')} run, not a smoke run; smoke "
                        "mode replaces only smoke runs. Nothing was changed. Choose another output directory "
                        "(-o) for the smoke run.")


def _listing(path: Path) -> str:
    names = _contents(path)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


# ---------------------------------------------------------------- claiming a run directory (lock + marker)

_CLAIMS: dict[Path, bool] = {}  # run directories this process holds the lock of -> created fresh by it


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), to tell a live process from a new one that
    got the same pid; None where /proc is not available."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _lock_holder(path: Path) -> dict | None:
    try:
        data = json.loads((path / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None}
    return data if isinstance(data, dict) else {"pid": None}


def _holder_alive(holder: dict) -> bool | None:
    """True / False for a process on this machine; None when it cannot be told (another host, unreadable)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != platform.node():
        return None
    if pid == os.getpid():
        return False  # this process: a claim left by an earlier run in it (a test, a notebook)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(pid)
    return started is None or holder.get("started") in (None, started)


def _check_lock(path: Path, key: str) -> None:
    holder = _lock_holder(path)
    if holder is None:
        return
    alive = _holder_alive(holder)
    if alive:
        raise UserError(f"{key}: {path} is being written by another llmkit process (pid {holder['pid']}, "
                        f"{holder.get('command', 'a run')} started {holder.get('time', '?')}); two runs must not "
                        "share a directory. Nothing was changed. Wait for it to finish, or choose another "
                        "--output-dir.")
    if alive is None and holder.get("pid") is not None:
        raise UserError(f"{key}: {path} is locked by process {holder['pid']} on {holder.get('host')}, which cannot "
                        f"be checked from here. If that run is over, delete {path / LOCK}; otherwise choose "
                        "another --output-dir.")


def _stale_note(path: Path) -> str:
    holder = _lock_holder(path)
    if holder and holder.get("pid") and _holder_alive(holder) is False and holder["pid"] != os.getpid():
        return (f" (process {holder['pid']}, which started a run there at {holder.get('time', '?')}, is no longer "
                "running: that run stopped without finishing; train.resume=auto continues it)")
    return ""


def _take_lock(path: Path, command: str, key: str) -> None:
    """Create the lock file exclusively: of two processes aiming at one directory, exactly one gets it."""
    holder = {"pid": os.getpid(), "host": platform.node(), "started": _process_start(os.getpid()),
              "command": command, "time": datetime.datetime.now().isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(path / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            old = _lock_holder(path) or {}
            if _holder_alive(old) is not False:
                _check_lock(path, key)
                raise UserError(f"{key}: {path} is locked ({path / LOCK}); delete that file if no run is "
                                "writing there.") from None
            if old.get("pid") != os.getpid():
                print(f"{key}: process {old.get('pid')} left {path} locked but is no longer running (its run "
                      "stopped without finishing); taking the directory over.")
            (path / LOCK).unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(holder, fh)
        return


def prepare_run_dir(path: Path, overwrite: bool | str, resume: str | None, state: Any = None, *,
                    command: str = "run", smoke: bool = False, inputs: list[tuple[str, Path]] = (),
                    key: str = "output_dir") -> Path:
    """Claim the run directory: check it (check_output_dir), lock it, clear it when it is replaced, mark it.

    Never deletes what llmkit did not create (see check_output_dir). `state`: the launch's PartialState
    (arguments.launch_state); under a multi-process launch every process checks the directory, then only the
    main process claims it while the others wait. The lock is given back by `release_claims`.
    """
    path = path.expanduser().resolve()
    existing = check_output_dir(path, overwrite=overwrite, resume=resume, inputs=inputs, key=key)
    together = state is not None and state.num_processes > 1
    if together:
        state.wait_for_everyone()  # every process has looked before the main one changes anything
    if state is None or state.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        _take_lock(path, command, key)
        try:  # checked again under the lock: another process may have written there since the first look
            existing = check_output_dir(path, overwrite=overwrite, resume=resume, inputs=inputs, key=key)
        except UserError:
            (path / LOCK).unlink(missing_ok=True)
            raise
        if existing and not resume:  # replaced: check_output_dir found the marker of an llmkit run
            for child in path.iterdir():
                if child.name == LOCK:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        if not existing or not resume or read_marker(path) is None:
            marker = {"command": command, "smoke": bool(smoke),
                      "created": datetime.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid()}
            (path / MARKER).write_text(json.dumps(marker) + "\n")
        _CLAIMS[path] = not (existing and resume)
    if together:
        state.wait_for_everyone()
    return path


def claim_run_dir(cfg: Any, command: str, config_path: str | None, overwrite: bool | str, state: Any = None,
                  path: Path | None = None) -> Path:
    """prepare_run_dir for a recipe's config: `path` (default: output_dir, or a new default name), with the
    config's resume, smoke flag and inputs."""
    path = path or (Path(cfg.output_dir) if cfg.output_dir else default_run_dir(command, config_path))
    train = getattr(cfg, "train", None)
    smoke = bool(getattr(train, "smoke", False) or getattr(getattr(cfg, "eval", None), "smoke", False))
    return prepare_run_dir(path, overwrite, getattr(train, "resume", None), state, command=command, smoke=smoke,
                           inputs=input_paths(cfg, config_path))


def release_claims(failed: bool = False) -> None:
    """Give back this process's run directories. After a failure, a directory this run created that holds no
    training output yet (only its config, environment and marker) is removed, so a plain re-run works."""
    for path, fresh in list(_CLAIMS.items()):
        del _CLAIMS[path]
        holder = _lock_holder(path)
        if holder and holder.get("pid") == os.getpid():
            (path / LOCK).unlink(missing_ok=True)
        if failed and fresh and path.is_dir() and not holds_training_output(path):
            marker = read_marker(path)
            if marker and marker.get("pid") == os.getpid():
                shutil.rmtree(path, ignore_errors=True)


def holds_training_output(path: Path) -> bool:
    """Whether a run directory holds training output, at its top or in a member's folder (a prompt seed's
    seed-N/, whose checkpoints an interrupted run leaves for `train.resume: auto`)."""
    folders = [path, *(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())]
    return any((folder / name).exists() for folder in folders for name in TRAINING_OUTPUTS)


@contextlib.contextmanager
def claims_released() -> Iterator[None]:
    """Around a command: its run directories are given back at the end, and cleared when it failed early."""
    try:
        yield
    except BaseException:
        release_claims(failed=True)
        raise
    release_claims()


# ---------------------------------------------------------------- reading a finished run

# Data settings an eval of a run directory inherits from the run's config unless the eval config sets them.
INHERITED_DATA_KEYS = ("text_column", "text_pair_column", "label_column", "label_separator", "max_length", "format",
                       "column_names", "tokens_column", "tags_column", "score_column", "score_range")


@dataclass
class RunDirectory:
    """An llmkit run directory: its saved config and its model folder."""

    path: Path
    config: dict

    @property
    def model_dir(self) -> Path:
        """model/ of a full run; adapter/ of an adapter run (loaded as its base model plus the adapter)."""
        return self.path / ADAPTER_DIR if find_adapter_dir(self.path) else self.path / "model"


def find_run_directory(name: str | None, key: str = "model.name_or_path") -> RunDirectory | None:
    """The run directory `name` (the config's `key`) points to, or None for an ordinary model reference."""
    if not name or not isinstance(name, str):  # a wrong type is reported by the config's own checks
        return None
    path = Path(name).expanduser()
    try:
        if not (path / "config.yaml").is_file():
            return None
    except OSError:  # a name the file system cannot take (too long): not a run directory
        return None
    if not (path / "model" / "config.json").is_file() and find_adapter_dir(path) is None:
        if (path / "eval.json").is_file():
            raise UserError(f"{key}: {path} is an llmkit eval run directory: it holds evaluation results, not a "
                            "model. Point to the run or model directory it evaluated (its config.yaml names it "
                            "under model.name_or_path).")
        raise UserError(f"{key}: {path} is an llmkit run directory without a model (no "
                        "model/config.json nor adapter/): the run did not finish. Resume it with train.resume=auto, "
                        "or point to a checkpoint folder under checkpoints/.")
    return RunDirectory(path=path.resolve(), config=read_yaml(path / "config.yaml"))  # safe loader, clear errors


def inherit_from_run(raw: dict) -> dict:
    """Fill the data settings of an eval config from the run directory it evaluates (explicit keys win)."""
    run = find_run_directory((raw.get("model") or {}).get("name_or_path"))
    if run is None:
        return raw
    saved = run.config.get("data") or {}
    data = dict(raw.get("data") or {})
    for key in INHERITED_DATA_KEYS:
        if key not in data and saved.get(key) is not None:
            data[key] = saved[key]
    return {**raw, "data": data}


# Sections that define what a run trains on; resuming with them changed would mix two experiments.
RESUME_FIXED_SECTIONS = ("model", "tokenizer", "task", "data", "adapter", "distill", "prompt")


def _flatten(data: Any, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_resume_config(run_dir: Path, cfg: Any) -> None:
    """Resuming must continue the same experiment: refuse changed model/tokenizer/task/data settings (listing
    them); changed training settings (e.g. a longer max_steps) are allowed and reported."""
    saved_path = run_dir / "config.yaml"
    if not cfg.train.resume or not saved_path.is_file():
        return
    saved = _flatten(read_yaml(saved_path))
    now = _flatten(redact_config(to_dict(cfg))[0])  # secrets are saved as null: compare them as such
    changed = sorted(k for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k) and k not in ("train.resume", "output_dir"))
    fixed = [k for k in changed if k.split(".")[0] in RESUME_FIXED_SECTIONS]
    if fixed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in fixed[:6])
        raise UserError(f"train.resume: this config differs from the run's saved config ({saved_path}) in what "
                        f"the run trains on: {shown}. Resume with the saved config (llmkit <command> "
                        f"{saved_path} train.resume=auto), or start a new run with --output-dir.")
    if changed:
        print("resuming with changed training settings: " +
              "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed))


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from (None when it looks whole): its trainer_state.json
    must parse, every safetensors file must be covered by its header, the optimizer, scheduler and RNG states
    must be there and every torch file must be an intact zip archive. Reads the files but unpickles nothing."""
    import zipfile

    from safetensors import safe_open

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "its trainer_state.json is missing or corrupt"
    weights = sorted(path.rglob("*.safetensors"))
    if not weights:
        return "it holds no model or adapter weights (*.safetensors)"
    for file in weights:
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError)
            return f"{file.relative_to(path)} is truncated or corrupt ({first_line(e).rstrip('.')})"
    sharded = any(path.glob("global_step*")) or any(path.glob("*fsdp*")) or any(path.glob("optimizer_0*"))
    if not sharded:  # DeepSpeed and FSDP keep their optimizer state in folders of their own
        missing = [name for name in ("optimizer.pt", "scheduler.pt") if not (path / name).is_file()]
        missing += [] if any(path.glob("rng_state*.pth")) else ["rng_state.pth"]
        if missing:  # transformers would resume without them, silently starting the optimizer or RNG anew
            return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    for file in sorted([*path.glob("*.pt"), *path.glob("*.pth")]):
        try:
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile):
            bad = file.name
        if bad:
            return f"{file.name} is truncated or corrupt"
    return None


def checkpoints_newest_first(ckpt_dir: Path) -> list[Path]:
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True)


def find_resume_checkpoint(run_dir: Path, resume: str | None) -> str | None:
    """The checkpoint to resume from: the newest whole one in the run (`auto`; a broken newer one is named and
    passed over), a given path (refused when broken, naming the newest whole one), or None."""
    if not resume:
        return None
    ckpt_dir = run_dir / CHECKPOINTS
    candidates = checkpoints_newest_first(ckpt_dir) if ckpt_dir.is_dir() else []
    if resume == "auto":
        for checkpoint in candidates:
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                return str(checkpoint)
            print(f"train.resume=auto: skipping {checkpoint.name}: {problem}.")
        if candidates:
            raise UserError(f"train.resume: no usable checkpoint in {ckpt_dir} (every one is broken, see above). "
                            "Start the run again with --overwrite, or resume from a copy of a good checkpoint.")
        print(f"train.resume=auto: no checkpoint in {ckpt_dir} yet; starting from the beginning.")
        return None
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise UserError(f"train.resume: no checkpoint directory at {resume!r}. Use auto, or a checkpoint-N folder.")
    problem = checkpoint_problem(path)
    if problem is not None:
        siblings = checkpoints_newest_first(path.parent) if path.parent.is_dir() else []
        good = next((c for c in siblings if c.resolve() != path.resolve() and checkpoint_problem(c) is None), None)
        fix = f"The newest whole checkpoint beside it is {good}; resume from that one." if good else \
            "Point to another checkpoint-N folder."
        raise UserError(f"train.resume: {path} is not a usable checkpoint ({problem}). {fix}")
    return str(path.resolve())


def environment(precision: str, world_size: int) -> dict:
    """Versions, device and precision, for env.json."""
    import importlib.metadata as md

    import torch

    versions = {}
    for pkg in ("llmkit", "torch", "transformers", "datasets", "accelerate", "evaluate", "peft", "tokenizers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    cpu = f"cpu ({cpu_model() or platform.processor() or platform.machine()})"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu
    return {
        "versions": {"python": sys.version.split()[0], **versions},
        "llmkit_git": git_state(),
        "device": device,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": torch.cuda.device_count(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
        "world_size": world_size,
        "platform": platform.platform(),
        "command": " ".join(redact_argv(sys.argv)),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), e.g. "Intel(R) Xeon(R) Platinum 8488C"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git_state() -> dict | None:
    """The commit of the llmkit checkout this run used, and whether it had uncommitted changes (None when
    llmkit is installed from a wheel rather than a git checkout)."""
    import subprocess

    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted_changes": bool(dirty)}


def write_json(path: Path, data: Any) -> None:
    path.write_text(scrub(json.dumps(data, indent=2, default=str)) + "\n")


def write_log_history(path: Path, history: list[dict]) -> None:
    """Rewrite log_history.jsonl from the Trainer's state (exact after a resume)."""
    path.write_text(scrub("".join(json.dumps(record) + "\n" for record in history)))
