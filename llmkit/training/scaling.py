"""Size sweeps: non-embedding parameter counts and the power law L(N) = (N_c / N)^alpha (Kaplan et al. 2020).

numpy, matplotlib and torch are imported inside the functions: the CLI imports this module and must start fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMULA = "L(N) = (N_c / N)^alpha"


def _tensor_keys(tensor: Any) -> set[tuple[str, int]]:
    """Identity keys of a parameter: its id and, when it has real storage, its data pointer (tied weights share it)."""
    keys = {("id", id(tensor))}
    try:
        ptr = tensor.data_ptr()
    except (RuntimeError, AttributeError):  # meta tensors, exotic parameter types
        ptr = 0
    if ptr:
        keys.add(("ptr", ptr))
    return keys


def _module_or_none(model: Any, getter: str) -> Any:
    """model.get_input_embeddings() / get_output_embeddings(), or None when the model has no such module."""
    fn = getattr(model, getter, None)
    if fn is None:
        return None
    try:
        return fn()
    except (NotImplementedError, AttributeError):
        return None


def _embedding_weights(model: Any) -> list[Any]:
    """Weights Kaplan et al. leave out of N: every nn.Embedding table, plus an output projection tied to (or shaped
    like) the input embedding."""
    from torch import nn

    weights = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is not None]
    inp = _module_or_none(model, "get_input_embeddings")
    out = _module_or_none(model, "get_output_embeddings")
    inp_weight = getattr(inp, "weight", None)
    out_weight = getattr(out, "weight", None)
    if inp_weight is not None and out_weight is not None:
        tied = bool(_tensor_keys(out_weight) & _tensor_keys(inp_weight))
        if tied or tuple(out_weight.shape) == tuple(inp_weight.shape):
            weights.append(out_weight)
    return weights


def non_embedding_parameters(model: Any) -> int:
    """Parameters excluding token and position embeddings (and an lm_head tied to / shaped like the token
    embedding), as Kaplan et al. count N.

    Embeddings are the nn.Embedding modules of the model (GPT-2 wte/wpe; Llama embed_tokens, whose rotary
    embedding has no parameters; BERT word/position/token_type embeddings) plus the output projection returned by
    model.get_output_embeddings() when its weight is the same tensor as the input embedding's (tied) or has the same
    shape. Only that weight is excluded: an output bias (BERT's MLM decoder bias) stays counted. Each parameter
    tensor is counted once: tied weights are deduplicated by id and data pointer.
    """
    excluded: set[tuple[str, int]] = set()
    for weight in _embedding_weights(model):
        excluded |= _tensor_keys(weight)
    seen: set[tuple[str, int]] = set()
    total = 0
    for param in model.parameters():
        keys = _tensor_keys(param)
        if keys & seen:
            continue
        seen |= keys
        if not keys & excluded:
            total += param.numel()
    return int(total)


@dataclass
class PowerLawFit:
    """L(N) = (N_c / N)^alpha fitted to a size sweep."""

    alpha: float  # exponent
    n_c: float  # N_c
    r2: float  # coefficient of determination of the fit in log-log space
    points: int

    def predict(self, n: Any) -> Any:
        """(n_c / n) ** alpha: a float for a scalar n, a numpy array for an array-like n."""
        import numpy as np

        arr = np.asarray(n, dtype=float)
        out = (self.n_c / arr) ** self.alpha
        return float(out) if out.ndim == 0 else out

    def to_dict(self) -> dict:
        """JSON-serialisable summary of the fit."""
        return {
            "formula": FORMULA,
            "alpha": float(self.alpha),
            "n_c": float(self.n_c),
            "r2": float(self.r2),
            "points": int(self.points),
        }


def _validated(params: Sequence[float], losses: Sequence[float], min_points: int) -> tuple[Any, Any]:
    """params and losses as float arrays; ValueError unless they pair up, are finite and > 0."""
    import numpy as np

    try:
        n = np.asarray(params, dtype=float).ravel()
        loss = np.asarray(losses, dtype=float).ravel()
    except (TypeError, ValueError) as e:
        raise ValueError(f"parameter counts and losses must be numbers: {e}") from None
    if n.size != loss.size:
        raise ValueError(f"got {n.size} parameter counts but {loss.size} losses")
    if n.size < min_points:
        raise ValueError(f"need at least {min_points} (parameter count, loss) points, got {n.size}")
    for name, values in (("parameter counts", n), ("losses", loss)):
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"{name} must all be finite and > 0 for a log-log fit, got {values.tolist()}")
    return n, loss


def fit_power_law(params: Sequence[float], losses: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of L(N) = (N_c / N)^alpha as a line in log-log space.

    log L = alpha * log N_c - alpha * log N: slope -alpha, intercept alpha * log N_c. R^2 = 1 - SS_res / SS_tot of
    log L. With exactly 2 points the line goes through both and R^2 is 1.0 (it says nothing about the fit's
    quality). Raises ValueError for fewer than 2 points, fewer than 2 distinct N, values that are not > 0, or
    losses that do not change with N (no power law: alpha would be 0 and N_c undefined).
    """
    import numpy as np

    n, loss = _validated(params, losses, min_points=2)
    if np.unique(n).size < 2:
        raise ValueError(f"need at least 2 distinct parameter counts to fit a power law, got {n.tolist()}")
    x, y = np.log(n), np.log(loss)
    if np.ptp(y) == 0:
        raise ValueError("all losses are equal: the loss does not depend on N, there is no power law to fit")
    slope, intercept = np.polyfit(x, y, 1)
    alpha = -float(slope)
    if alpha == 0:
        raise ValueError("the fitted exponent is 0: the loss does not depend on N, N_c is undefined")
    log_n_c = float(intercept) / alpha
    if not math.isfinite(log_n_c) or abs(log_n_c) > 700:
        raise ValueError(f"the fitted N_c = exp({log_n_c:.4g}) is out of range (alpha = {alpha:.4g})")
    return PowerLawFit(alpha=alpha, n_c=math.exp(log_n_c), r2=_r_squared(x, y, slope, intercept), points=int(n.size))


def _r_squared(x: Any, y: Any, slope: float, intercept: float) -> float:
    """1 - SS_res / SS_tot of the line; exactly 1.0 for two points (a line through both)."""
    import numpy as np

    if x.size == 2:
        return 1.0
    ss_res = float(np.sum((y - (slope * x + intercept)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot


def plot_scaling(
    params: Sequence[float],
    losses: Sequence[float],
    fit: PowerLawFit | None,
    path: str | Path,
    labels: Sequence[str] | None = None,
    ylabel: str = "validation loss",
) -> None:
    """Draw the sweep on log-log axes (scaling.png): one point per size, annotated with its label when given, and
    the fitted line over a slightly wider N range with alpha and R^2 in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, loss = _validated(params, losses, min_points=1)
    if labels is not None and len(labels) != n.size:
        raise ValueError(f"got {len(labels)} labels for {n.size} points")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(n, loss, "o", label="runs", zorder=3)
    for label, x, y in zip(labels or [], n, loss):
        ax.annotate(str(label), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if fit is not None:
        _draw_fit(ax, fit, n)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_y_ticks(ax)
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plain_y_ticks(ax: Any) -> None:
    """Losses span a narrow range: label the log y axis with plain numbers (3.5, 4) rather than 4 x 10^0."""
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))


def _draw_fit(ax: Any, fit: PowerLawFit, n: Any) -> None:
    """The fitted law as a dashed line from a bit below the smallest to a bit above the largest N."""
    import numpy as np

    grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 100)
    label = f"fit: alpha = {fit.alpha:.3f}, N_c = {fit.n_c:.3g}, R² = {fit.r2:.3f}"
    ax.plot(grid, fit.predict(grid), "--", label=label)
