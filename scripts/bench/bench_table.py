"""A bench.py report as the Markdown table docs/BENCHMARKS.md carries: one row per record, in run order.

    python scripts/bench/bench_table.py bench.json > table.md

Columns: the record's name, its value and unit, the baseline and what it is, the ratio (the paired ratio where
there is one: the median of per-round ratios), the target and whether it is met. Groups that failed are listed
after the table with their error, so a partial run cannot pass for a whole one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and abs(value) < 10:
        return f"{value:.4g}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|")  # a unit such as "|bf16 - fp32|" would end the cell


def table(report: dict) -> str:
    machine = report.get("machine", {})
    lines = [f"`python scripts/bench/bench.py` ({report.get('mode', '?')} mode), "
             f"{report.get('total_seconds', 0):,.0f} s; "
             f"{machine.get('cpu_cores', '?')} CPU cores, {machine.get('torch_threads', '?')} torch threads, torch "
             f"{machine.get('torch', '?')}, `precision: auto` → {machine.get('precision_auto', '?')} (bf16 matmuls "
             f"{machine.get('cpu_bf16_matmul_speedup', '?')} × fp32's), CUDA {machine.get('cuda', '?')}.", "",
             "| record | value | baseline | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report.get("results", []):
        ratio = r.get("paired_ratio", r.get("ratio"))
        baseline = f"{number(r['baseline'])} ({r.get('baseline_name') or ''})" if r.get("baseline") is not None else "—"
        met = {True: "yes", False: "no"}.get(r.get("meets_target"), "—")
        value = cell(f"{number(r['value'])} {r['unit']}")
        target = cell(r.get("target") or "—")
        lines.append(f"| {r['name']} | {value} | {cell(baseline)} | {number(ratio)} | {target} | {met} |")
    errors = report.get("errors") or {}
    if errors:
        lines += ["", "Groups that failed:"] + [f"- {name}: {message}" for name, message in errors.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(table(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
