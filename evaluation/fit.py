"""Fitting linear heads on image embeddings: logistic regression with torch's L-BFGS.

Exclusive label sets get one multinomial (softmax) regression; attribute sets one binary
(sigmoid) regression per label. The L2 penalty pulls the weights towards a prior: zero, or a
zero-shot classifier's own weights (``--init``), so that with few examples the head stays close
to what the prompts already knew. Its strength is chosen by out-of-fold log-loss on the
training images, never on the held-out ones that the report measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
FOLDS = 5
MAX_ITER = 500


@dataclass(frozen=True)
class LinearFit:
    """``z = weight @ embedding + bias`` (embedding: L2-normalised, as the service makes it)."""

    weight: np.ndarray  # (labels, dim) float32
    bias: np.ndarray  # (labels,) float32
    l2: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weight.T.astype(np.float64) + self.bias


def _targets(y: np.ndarray, exclusive: bool):
    import torch

    return torch.as_tensor(y, dtype=torch.long if exclusive else torch.float64)


def fit_linear(x: np.ndarray, y: np.ndarray, exclusive: bool, l2: float,
               prior: tuple[np.ndarray, np.ndarray] | None = None, labels: int | None = None) -> LinearFit:
    """Minimise mean cross-entropy + ``l2``/2 x ||W - W_prior||^2 over the weights (and, with
    a ``prior``, + ``l2``/2 x ||b - b_prior||^2: without one the bias is free, as usual).

    ``x``: (n, dim) embeddings. ``y``: class indices (exclusive) or a 0/1 matrix (n, labels)
    (attributes). Features are scaled by sqrt(dim) while fitting so that one ``l2`` grid suits
    every embedding size; the returned weights apply to the embeddings as given.
    """
    import torch

    x64 = np.asarray(x, np.float64)
    n, dim = x64.shape
    k = labels if labels is not None else (int(np.max(y)) + 1 if exclusive else y.shape[1])
    scale = np.sqrt(dim)
    features = torch.as_tensor(x64 * scale)
    target = _targets(y, exclusive)
    w0 = torch.zeros(k, dim, dtype=torch.float64)
    b0 = torch.zeros(k, dtype=torch.float64)
    if prior is not None:
        w0 = torch.as_tensor(np.asarray(prior[0], np.float64) / scale)
        b0 = torch.as_tensor(np.asarray(prior[1], np.float64))
    weight = w0.clone().requires_grad_(True)
    bias = b0.clone().requires_grad_(True)
    loss_fn = torch.nn.CrossEntropyLoss() if exclusive else torch.nn.BCEWithLogitsLoss()
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=MAX_ITER, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = loss_fn(features @ weight.T + bias, target) + 0.5 * l2 * ((weight - w0) ** 2).sum()
        if prior is not None:  # held towards the zero-shot classifier, its bias included
            loss = loss + 0.5 * l2 * ((bias - b0) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    w = (weight.detach().numpy() * scale).astype(np.float32)
    return LinearFit(w, bias.detach().numpy().astype(np.float32), l2)


def probabilities(fit: LinearFit, x: np.ndarray, exclusive: bool) -> np.ndarray:
    """Row-wise softmax (exclusive) or per-label sigmoid, with the service's own functions."""
    from classifiers.scoring import sigmoid, softmax

    z = fit.logits(x)
    return softmax(z) if exclusive else sigmoid(z)


def log_loss(p: np.ndarray, y: np.ndarray, exclusive: bool) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    if exclusive:
        return float(-np.mean(np.log(p[np.arange(len(y)), y])))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def stratified_folds(strata: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold number per row, each stratum dealt round-robin over the folds in a fixed shuffle."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(strata), int)
    offset = 0
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        out[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return out


def split_holdout(strata: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices): ``fraction`` of each stratum held out (at least one
    image of a stratum with two or more), the same every run."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(strata), bool)
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        count = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
        held[members[:count]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def split_holdout_multilabel(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices for a 0/1 label matrix: rarest label first, ``fraction`` of
    each label's images (at least one) held out, counting those already held out for another
    label, never the last image of a label left for training; then ``fraction`` of the images
    with no label. Every label with two or more images has images on both sides."""
    positives = np.asarray(y) > 0
    order = np.random.default_rng(seed).permutation(len(positives))
    left = positives.sum(axis=0).astype(int)  # per label: its images still on the training side
    held = np.zeros(len(positives), bool)
    for label in np.argsort(left, kind="stable"):
        members = order[positives[order, label]]
        want = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
        count = int(held[members].sum())
        for i in members:
            if count >= want:
                break
            labels = np.flatnonzero(positives[i])
            if not held[i] and (left[labels] > 1).all():
                held[i] = True
                left[labels] -= 1
                count += 1
    empty = order[~positives[order].any(axis=1)]
    held[empty[: round(len(empty) * fraction)]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


@dataclass(frozen=True)
class CrossValidated:
    """The chosen penalty, the final fit on every training image, and out-of-fold scores
    (each training image scored by a fit that did not see it) for choosing thresholds."""

    fit: LinearFit
    out_of_fold: np.ndarray  # (n, labels) probabilities
    losses: dict[float, float]  # l2 -> out-of-fold log-loss


def cross_validate(x: np.ndarray, y: np.ndarray, strata: np.ndarray, exclusive: bool, labels: int,
                   prior: tuple[np.ndarray, np.ndarray] | None = None,
                   grid: tuple[float, ...] = L2_GRID, folds: int = FOLDS) -> CrossValidated:
    """Pick ``l2`` from ``grid`` by out-of-fold log-loss, then fit on all of ``x``."""
    smallest = np.min(np.unique(strata, return_counts=True)[1])
    folds = max(2, min(folds, int(smallest))) if smallest >= 2 else 2
    fold_of = stratified_folds(strata, folds)
    losses, oof_by_l2 = {}, {}
    for l2 in grid:
        oof = np.zeros((len(x), labels))
        for f in range(folds):
            train, test = fold_of != f, fold_of == f
            if not test.any() or not train.any():
                continue
            part = fit_linear(x[train], y[train], exclusive, l2, prior, labels)
            oof[test] = probabilities(part, x[test], exclusive)
        losses[l2], oof_by_l2[l2] = log_loss(oof, y, exclusive), oof
    best = min(losses, key=lambda l2: (losses[l2], -l2))  # ties: the stronger penalty
    return CrossValidated(fit_linear(x, y, exclusive, best, prior, labels), oof_by_l2[best], losses)
