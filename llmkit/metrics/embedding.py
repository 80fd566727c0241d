"""Sentence-embedding metrics: STS correlations and retrieval recall@k / MRR, from embeddings (numpy, scipy).

Cosine similarities are computed in float64 from the float32 embeddings, so the figures do not depend on the
order of a matrix product's sums. scipy is part of the embeddings extra (`pip install "llmkit[embeddings]"`),
imported where a function needs it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RETRIEVAL_KS = (1, 5, 10)
EPS = 1e-12  # a zero embedding has cosine 0 with everything (as torch's cosine_similarity), not NaN


def normalized(embeddings: Any) -> np.ndarray:
    """Rows scaled to unit length (float64)."""
    x = np.asarray(embeddings, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def paired_cosine(a: Any, b: Any) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    return np.sum(normalized(a) * normalized(b), axis=1)


def cosine_matrix(queries: Any, candidates: Any) -> np.ndarray:
    """Cosine similarity of every query (rows) with every candidate (columns)."""
    return normalized(queries) @ normalized(candidates).T


def sts_correlations(similarities: Any, gold: Any) -> dict[str, float]:
    """Spearman and Pearson correlation of the predicted similarities with the gold scores. A constant
    prediction (every pair equally similar) has no correlation: NaN, as scipy defines it."""
    import warnings

    from scipy import stats

    sims, gold = np.asarray(similarities, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    with warnings.catch_warnings():  # scipy warns on constant input and returns NaN; the report says why
        warnings.simplefilter("ignore")
        spearman = stats.spearmanr(sims, gold).statistic
        pearson = stats.pearsonr(sims, gold).statistic
    return {"spearman": float(spearman), "pearson": float(pearson)}


def retrieval_ranks(scores: Any, gold: list[int]) -> np.ndarray:
    """The 1-based rank of each query's own positive among all candidates (rows: queries, columns: candidates).

    A candidate scoring exactly as high as the positive ranks above it (ties count against the query), so the
    figures never depend on the order of the candidates."""
    scores = np.asarray(scores, dtype=np.float64)
    own = scores[np.arange(len(gold)), gold][:, None]
    return (scores >= own).sum(axis=1)  # the positive itself counts once: rank 1 when nothing else reaches it


def rank_positives(queries: Any, candidates: Any, gold: list[int], chunk: int = 1024) -> np.ndarray:
    """retrieval_ranks of every query against every candidate by cosine similarity, `chunk` queries at a time
    (the full matrix of a large file would not fit in memory)."""
    cands = normalized(candidates)
    queries = normalized(queries)
    gold = np.asarray(gold)
    return np.concatenate([retrieval_ranks(queries[i:i + chunk] @ cands.T, gold[i:i + chunk])
                           for i in range(0, len(queries), chunk)]) if len(queries) else np.zeros(0, dtype=int)


def retrieval_metrics(ranks: Any, ks: tuple[int, ...] = RETRIEVAL_KS) -> dict[str, float]:
    """recall@k (share of queries whose positive ranks k-th or better) and MRR (mean of 1/rank over the whole
    ranking, no cut-off)."""
    ranks = np.asarray(ranks)
    out = {f"recall_at_{k}": float(np.mean(ranks <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


def finite(value: float) -> float | None:
    """A figure for eval.json: NaN (no correlation) is written as null."""
    return None if value is None or math.isnan(value) else value
