"""Markdown tables, the confusion-matrix PNG and the similarity scatter plot, for reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1e6 else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


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


def plot_similarity(gold: list[float], similarity: list[float], path: Path, title: str,
                    figures: dict[str, float | None]) -> None:
    """STS: each pair's cosine similarity (y) against its gold score (x) as a PNG, the correlations in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    alpha = 0.6 if len(gold) <= 200 else 0.3
    ax.scatter(gold, similarity, s=8, alpha=alpha, color="tab:blue", edgecolors="none")
    ax.set_xlabel("gold score")
    ax.set_ylabel("cosine similarity")
    ax.ticklabel_format(axis="y", useOffset=False)
    shown = ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in figures.items())
    ax.set_title(f"similarity vs gold score ({title})\n{shown}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
