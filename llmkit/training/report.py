"""report.md, the loss-curve PNG of a run, and the rewards PNG of a preference run."""

from __future__ import annotations

from pathlib import Path

from llmkit.config.secrets import scrub
from llmkit.metrics.tables import markdown_table


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


REWARD_CURVES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def plot_rewards(history: list[dict], path: Path) -> bool:
    """A preference run's implicit rewards against step, one panel each for chosen, rejected, margins and
    accuracies, training (the logged means) and validation lines; False when the history has none."""
    def points(key: str) -> list[tuple[int, float]]:
        return [(h["step"], h[key]) for h in history if key in h and "step" in h]

    curves = {name: (points(name), points(f"eval_{name}")) for name in REWARD_CURVES}
    if not any(train or evals for train, evals in curves.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(8, 5.5), dpi=100, sharex=True)
    for ax, (name, (train, evals)) in zip(axes.flat, curves.items()):
        if train:
            ax.plot(*zip(*train), label="train")
        if evals:
            ax.plot(*zip(*evals), "o-", label="validation")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if train or evals:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


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
    if plot_rewards(history, run_dir / "rewards.png"):
        parts += ["", "## Rewards", "", "![implicit rewards: chosen, rejected, margins, accuracies](rewards.png)"]
    path = run_dir / "report.md"
    path.write_text(scrub("\n".join(parts)) + "\n")
    return path
