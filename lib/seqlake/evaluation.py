"""One evaluation for the model and every baseline: metrics on the same test rows, and plots.

Metrics (``metrics``): AUC-ROC, AUC-PR (average precision), log loss, Brier score, and lift in
the top decile (the positive rate of the 10% highest scores over the overall rate). Plots
(``plots``): ROC, precision-recall, calibration (reliability by score decile), decile lift and
score distributions, one PNG each with every scorer on it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

EPS = 1e-7


def metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("evaluation needs both positive and negative labels")
    return {
        "auc_roc": float(roc_auc_score(y, p)),
        "auc_pr": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "lift_top_decile": lift(y, p, 0.1),
    }


def lift(labels: np.ndarray, scores: np.ndarray, share: float) -> float:
    """Positive rate among the top ``share`` by score over the overall rate (ties: stable order)."""
    y = np.asarray(labels, dtype=np.float64)
    top = max(1, int(np.ceil(share * len(y))))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return float(y[order[:top]].mean() / y.mean())


def decile_rates(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per score decile (highest first): mean score and positive rate."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    groups = np.array_split(order, 10)
    return (np.array([np.mean(scores[g]) for g in groups]), np.array([np.mean(labels[g]) for g in groups]))


def plots(results: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: Path) -> list[Path]:
    """PNG plots comparing every (labels, scores) pair in ``results``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (y, p) in results.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {metrics(y, p)['auc_roc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test split")
    ax.legend(fontsize=8)
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (y, p) in results.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=f"{name} (AP {metrics(y, p)['auc_pr']:.3f})")
    base = np.mean(next(iter(results.values()))[0])
    ax.axhline(base, color="k", ls=":", lw=1, label=f"base rate {base:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, test split")
    ax.legend(fontsize=8)
    save(fig, "precision_recall.png")

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (y, p) in results.items():
        mean_score, rate = decile_rates(y, p)
        ax.plot(mean_score, rate, "o-", label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean predicted propensity (score decile)", ylabel="observed purchase rate",
           title="Calibration, test split")
    ax.legend(fontsize=8)
    save(fig, "calibration.png")

    fig, ax = plt.subplots(figsize=(6, 5))
    width = 0.8 / max(len(results), 1)
    for i, (name, (y, p)) in enumerate(results.items()):
        _, rate = decile_rates(y, p)
        ax.bar(np.arange(1, 11) + i * width - 0.4 + width / 2, rate / np.mean(y), width, label=name)
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set(xlabel="score decile (1 = highest)", ylabel="lift", title="Decile lift, test split", xticks=range(1, 11))
    ax.legend(fontsize=8)
    save(fig, "decile_lift.png")

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (y, p) in results.items():
        ax.hist(p, bins=50, range=(0, 1), histtype="step", density=True, label=name)
    ax.set(xlabel="predicted propensity", ylabel="density", title="Score distributions, test split")
    ax.legend(fontsize=8)
    save(fig, "score_distribution.png")
    return written


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram_plot(counts: list[int], path: Path, *, title: str) -> Path:
    """Bar chart of propensity counts in equal bins over [0, 1] (counted by Spark)."""
    plt = _figure()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 1.0 / len(counts)
    ax.bar(np.arange(len(counts)) * width, counts, width=width, align="edge")
    ax.set(xlabel="propensity", ylabel="users", title=title, xlim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def decile_plots(mean_score: np.ndarray, rate: np.ndarray, base_rate: float, out_dir: Path, *, title: str) -> list[Path]:
    """Calibration (mean score vs realised rate per decile) and decile lift, from per-decile rows."""
    plt = _figure()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(mean_score, rate, "o-")
    top = max(float(np.max(mean_score, initial=0)), float(np.max(rate, initial=0)), 0.01)
    ax.plot([0, top], [0, top], "k:", lw=1)
    ax.set(xlabel="mean predicted propensity (decile)", ylabel="realised purchase rate", title=f"Calibration, {title}")
    fig.tight_layout()
    fig.savefig(out_dir / "calibration.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(np.arange(1, len(rate) + 1), rate / base_rate if base_rate > 0 else rate)
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set(xlabel="decile (1 = highest)", ylabel="lift", title=f"Decile lift, {title}", xticks=range(1, len(rate) + 1))
    fig.tight_layout()
    fig.savefig(out_dir / "decile_lift.png", dpi=100)
    plt.close(fig)
    return [out_dir / "calibration.png", out_dir / "decile_lift.png"]
