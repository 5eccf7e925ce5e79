"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation import metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(path: Path, cm: np.ndarray, names: list[str], title: str) -> Path:
    plt = _pyplot()
    cm = np.asarray(cm)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
           xlabel="predicted (top label)", ylabel="true label", title=title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.colorbar(image, ax=ax, label="share of the true label's images")
    return _save(fig, path, plt)


def pr_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], marks: dict[str, dict],
           title: str) -> Path:
    """``curves``: variant name to (y, unsafe score); ``marks``: named operating points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (y, s) in curves.items():
        precision, recall, _ = metrics.pr_curve(y, s)
        ap = metrics.average_precision(y, s)
        ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="post",
                label=f"{name} (AP {ap:.3f})")
    for name, point in marks.items():
        ax.plot(point["recall"], point["precision"], "o", label=f"{name}: t={point['threshold']:.4g}")
    base = np.mean(next(iter(curves.values()))[0])
    ax.axhline(base, color="grey", lw=0.8, ls=":", label=f"chance ({base:.2f})")
    ax.set(xlabel="recall (unsafe images flagged)", ylabel="precision (flags that are unsafe)",
           xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path, plt)


def histogram_png(path: Path, groups: dict[str, np.ndarray], threshold: float | None, xlabel: str,
                  title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    for name, values in groups.items():
        ax.hist(values, bins=bins, alpha=0.6, label=f"{name} ({len(values)})")
    if threshold is not None:
        ax.axvline(threshold, color="red", ls="--", label=f"threshold {threshold:g}")
    ax.set(xlabel=xlabel, ylabel="images", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def reliability_png(path: Path, before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray],
                    title: str, bins: int = 10) -> Path:
    """Accuracy against confidence per bin, before and after calibration: (confidence, correct)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, bins + 1)
    for name, (conf, correct) in (("before", before), ("after", after)):
        which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
        xs = [conf[which == b].mean() for b in range(bins) if (which == b).any()]
        ys = [correct[which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(xs, ys, "o-", label=f"{name} (ECE {metrics.expected_calibration_error(conf, correct):.3f})")
    ax.plot(edges, edges, color="grey", ls=":", label="perfect")
    ax.set(xlabel="confidence of the top label", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
