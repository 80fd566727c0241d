"""The run directory: creation rules, resume lookup, and the files every run writes (SPEC §6)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from llmkit.config.secrets import redact_argv, scrub
from llmkit.errors import UserError, first_line

CHECKPOINTS = "checkpoints"


def default_run_dir(command: str, config_path: str | None) -> Path:
    name = Path(config_path).stem if config_path else "run"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}-{name}-{stamp}"


def refuse_existing(path: Path, overwrite: bool, resume: str | None) -> bool:
    """Refuse a run directory that is a file, or exists with content and neither --overwrite nor train.resume
    was given (checked once before any work, and again when the directory is prepared); True if it has
    content."""
    path = path.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir: {path} exists and is a file, not a directory. Choose another --output-dir.")
    existing = path.is_dir() and any(path.iterdir())
    if existing and not resume and not overwrite:
        raise UserError(f"output_dir: {path} already exists and is not empty; nothing was changed. Use "
                        "--overwrite to replace it, train.resume=auto to continue that run, or --output-dir "
                        "for a new one.")
    return existing


def prepare_run_dir(path: Path, overwrite: bool, resume: str | None, state: Any = None) -> Path:
    """Create the run directory; never touch an existing one unless asked (--overwrite or train.resume).

    `state`: the launch's PartialState (arguments.launch_state). Under a multi-process launch every process
    checks the directory, then only the main process clears and creates it while the others wait: a second
    rank's --overwrite would otherwise delete what the first had started writing.
    """
    path = path.expanduser().resolve()
    existing = refuse_existing(path, overwrite, resume)
    together = state is not None and state.num_processes > 1
    if together:
        state.wait_for_everyone()  # every process has looked before the main one changes anything
    if state is None or state.is_main_process:
        if existing and not resume:
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    if together:
        state.wait_for_everyone()
    return path


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
    from llmkit.config.loader import read_yaml
    from llmkit.config.schema import to_dict
    from llmkit.config.secrets import redact_config

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
