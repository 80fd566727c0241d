"""report.md and the loss-curve PNG of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.config.secrets import scrub


def plot_loss(history: list[dict], path: Path) -> bool:
    """Draw training (and validation) loss against step; False when there is nothing to draw."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    """Confusion matrix as a PNG: rows are true classes, columns predicted ones, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(3.0, 0.6 * len(labels) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({title})")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1e6 else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(run_dir: Path, title: str, summary: dict, metrics: dict, sections: list[tuple[str, str]],
                 history: list[dict]) -> Path:
    """report.md: summary, final metrics, extra sections (per-class scores, confusion matrix), loss curve."""
    parts = [f"# {title}", ""]
    parts += [f"- **{k}**: {v}" for k, v in summary.items()]
    parts += ["", "## Metrics", "", markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()])]
    for heading, body in sections:
        parts += ["", f"## {heading}", "", body]
    if plot_loss(history, run_dir / "loss.png"):
        parts += ["", "## Loss", "", "![loss curve](loss.png)"]
    path = run_dir / "report.md"
    path.write_text(scrub("\n".join(parts)) + "\n")
    return path
