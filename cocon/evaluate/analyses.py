"""Analyses of learned video features used by the evaluation/report stage, as plain NumPy functions.

It holds the paper's analyses: nearest-neighbour retrieval recall (R@k), t-SNE embeddings, histograms
of same-class versus different-class cosine similarities, cross-view consistency of the nearest
classes (CoCon paper, Appendix B.2), soft temporal alignment heatmaps between two videos (Appendix C)
and the ensembling of per-view class probabilities. Every function takes and returns arrays (no
torch); scikit-learn is imported only by the function that needs it. The figures drawn from these
measures are in cocon.evaluate.figures.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Basic helpers
# --------------------------------------------------------------------------------------------------


def l2_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of x (N, D) divided by max(their L2 norm, eps); returns float64 (N, D)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (N, D), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def features_2d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def labels_1d(name: str, labels: np.ndarray, length: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {labels.shape}")
    return labels


def _order_descending(values: np.ndarray) -> np.ndarray:
    """Column indices of each row of values (N, M) sorted by descending value, ties to lower index."""
    return np.argsort(-values, axis=1, kind="stable")


# --------------------------------------------------------------------------------------------------
# Retrieval and cosine statistics
# --------------------------------------------------------------------------------------------------


def retrieval_recall(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10, 20, 50),
    center: bool = True,
) -> dict[int, float]:
    """Nearest-neighbour retrieval recall R@k of query (Q, D) against gallery (G, D).

    With `center`, the gallery mean (D,) is subtracted from both sets; rows are then L2-normalised and
    ranked by cosine similarity (descending, ties to the lower gallery index). R@k is the fraction of
    the Q queries with at least one of their top-min(k, G) gallery items sharing the query's label.
    Labels: query_labels (Q,), gallery_labels (G,). Returns {k: R@k} for every k in ks.
    """
    query = features_2d("query", query)
    gallery = features_2d("gallery", gallery)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query has {query.shape[1]} dims but gallery has {gallery.shape[1]}")
    query_labels = labels_1d("query_labels", query_labels, query.shape[0])
    gallery_labels = labels_1d("gallery_labels", gallery_labels, gallery.shape[0])
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}")

    if center:
        gallery_mean = gallery.mean(axis=0, keepdims=True)
        query = query - gallery_mean
        gallery = gallery - gallery_mean
    similarity = l2_rows(query) @ l2_rows(gallery).T  # (Q, G)
    ranked = _order_descending(similarity)  # (Q, G) gallery indices
    hit = gallery_labels[ranked] == query_labels[:, None]  # (Q, G) bool, in rank order
    first_hit_rank = np.where(hit.any(axis=1), hit.argmax(axis=1), gallery.shape[0])  # (Q,)
    num_gallery = gallery.shape[0]
    return {k: float(np.mean(first_hit_rank < min(k, num_gallery))) for k in ks}


def cosine_pairs(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of every unordered pair i < j of rows of features (N, D), labels (N,).

    Returns (same-label cosines, different-label cosines): float64 1-D arrays in row-major (i, j)
    order, of total length N (N - 1) / 2.
    """
    features = features_2d("features", features)
    labels = labels_1d("labels", labels, features.shape[0])
    normalised = l2_rows(features)
    rows, cols = np.triu_indices(features.shape[0], k=1)
    cosines = np.einsum("pd,pd->p", normalised[rows], normalised[cols])
    same = labels[rows] == labels[cols]
    return cosines[same].astype(np.float64), cosines[~same].astype(np.float64)


def class_similarity(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean cosine similarity between the videos of each pair of classes: (C, C) float64.

    features (N, D), labels (N,) in [0, C). Entry (a, b) is the mean over all ordered pairs (i in a,
    j in b) of cos(x_i, x_j), which equals the dot product of the per-class means of the L2-normalised
    rows; on the diagonal the self pairs (i, i) are included. Rows and columns of classes with no video
    are NaN.
    """
    features = features_2d("features", features)
    labels = labels_1d("labels", labels, features.shape[0]).astype(np.int64)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    normalised = l2_rows(features)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)  # (C,)
    sums = np.zeros((num_classes, features.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, normalised)
    present = counts > 0
    means = np.full_like(sums, np.nan)
    means[present] = sums[present] / counts[present, None]
    similarity = np.full((num_classes, num_classes), np.nan, dtype=np.float64)
    similarity[np.ix_(present, present)] = means[present] @ means[present].T
    return similarity


# --------------------------------------------------------------------------------------------------
# Cross-view class consistency (Appendix B.2)
# --------------------------------------------------------------------------------------------------


def nearest_classes(similarity: np.ndarray, top: int) -> np.ndarray:
    """The `top` most similar other classes of each class of similarity (C, C): (C, top) int64.

    Self and classes with a NaN similarity are never chosen; ties go to the lower class index. Rows of
    classes whose own diagonal entry is NaN (absent classes) are filled with -1. Raises ValueError when
    a present class has fewer than `top` valid other classes.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square (C, C), got shape {similarity.shape}")
    top = int(top)
    if top < 1:
        raise ValueError(f"top must be positive, got {top}")
    num_classes = similarity.shape[0]
    nearest = np.full((num_classes, top), -1, dtype=np.int64)
    for cls in range(num_classes):
        if np.isnan(similarity[cls, cls]):
            continue
        row = similarity[cls]
        candidates = np.flatnonzero(~np.isnan(row) & (np.arange(num_classes) != cls))
        if candidates.size < top:
            raise ValueError(f"class {cls} has only {candidates.size} valid other classes, fewer than top={top}")
        order = np.lexsort((candidates, -row[candidates]))  # primary: descending similarity
        nearest[cls] = candidates[order[:top]]
    return nearest


def cross_view_consistency(similarities: Mapping[str, np.ndarray], top: int = 5, min_common: int = 4) -> dict:
    """Agreement of the nearest classes across views, from class similarities {view: (C, C)}.

    A class is evaluated when it is present in every view (finite diagonal entry everywhere); the
    candidate neighbours are restricted to those evaluated classes, so every view ranks the same set.
    For each evaluated class its `top` nearest classes are intersected over all views; the class is
    consistent when the intersection holds at least `min_common` classes. Returns a JSON-ready dict:
    {"top", "min_common", "views": sorted names, "classes": number evaluated, "consistent_classes",
    "common": intersection size per class index (C,) with -1 for classes not evaluated,
    "nearest": {view: (C, top) nested list, -1 rows for classes not evaluated}}.
    """
    if len(similarities) < 2:
        raise ValueError(f"cross-view consistency needs at least 2 views, got {len(similarities)}")
    top = int(top)
    min_common = int(min_common)
    if top < 1 or min_common < 0:
        raise ValueError(f"need top >= 1 and min_common >= 0, got top={top}, min_common={min_common}")
    views = sorted(similarities)
    matrices = {view: np.asarray(similarities[view], dtype=np.float64) for view in views}
    shape = matrices[views[0]].shape
    for view, matrix in matrices.items():
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape != shape:
            raise ValueError(f"view {view!r}: similarity shape {matrix.shape} differs from {shape} or is not square")
    num_classes = shape[0]

    evaluated = np.ones(num_classes, dtype=bool)
    for matrix in matrices.values():
        evaluated &= np.isfinite(np.diag(matrix))

    nearest: dict[str, np.ndarray] = {}
    for view, matrix in matrices.items():
        restricted = matrix.copy()
        restricted[~evaluated, :] = np.nan
        restricted[:, ~evaluated] = np.nan
        nearest[view] = nearest_classes(restricted, top)

    common = np.full(num_classes, -1, dtype=np.int64)
    for cls in np.flatnonzero(evaluated):
        shared = set(nearest[views[0]][cls].tolist())
        for view in views[1:]:
            shared &= set(nearest[view][cls].tolist())
        common[cls] = len(shared)

    return {
        "top": top,
        "min_common": min_common,
        "views": views,
        "classes": int(evaluated.sum()),
        "consistent_classes": int(np.sum(evaluated & (common >= min_common))),
        "common": common.tolist(),
        "nearest": {view: nearest[view].tolist() for view in views},
    }


# --------------------------------------------------------------------------------------------------
# Soft temporal alignment (Appendix C)
# --------------------------------------------------------------------------------------------------


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(math.ceil(3.0 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _blur_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Convolve values (2-D) with a symmetric kernel along axis, padding with the edge values."""
    radius = kernel.size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(values, pad, mode="edge")
    length = values.shape[axis]
    out = np.zeros_like(values)
    for shift, weight in enumerate(kernel):
        out += weight * np.take(padded, np.arange(shift, shift + length), axis=axis)
    return out


def soft_alignment(za: np.ndarray, zb: np.ndarray, smooth_sigma: float = 1.0) -> np.ndarray:
    """Relative similarity of the blocks of two videos, za (Ta, D) and zb (Tb, D): (Ta, Tb) float64.

    Cosine similarity of every block pair; each row is then min-max scaled to [0, 1] (a constant row
    becomes all ones); if smooth_sigma > 0, a separable Gaussian blur (sigma in blocks, kernel radius
    ceil(3 sigma), edges padded with the nearest value) is applied along both axes.
    """
    za = features_2d("za", za)
    zb = features_2d("zb", zb)
    if za.shape[1] != zb.shape[1]:
        raise ValueError(f"za has {za.shape[1]} dims but zb has {zb.shape[1]}")
    if not smooth_sigma >= 0:
        raise ValueError(f"smooth_sigma must be >= 0, got {smooth_sigma}")
    cosine = l2_rows(za) @ l2_rows(zb).T
    row_min = cosine.min(axis=1, keepdims=True)
    row_range = cosine.max(axis=1, keepdims=True) - row_min
    constant = row_range <= 1e-12
    relative = np.where(constant, 1.0, (cosine - row_min) / np.where(constant, 1.0, row_range))
    if smooth_sigma > 0:
        kernel = _gaussian_kernel(float(smooth_sigma))
        relative = _blur_axis(_blur_axis(relative, kernel, axis=0), kernel, axis=1)
    return relative.astype(np.float64)


# --------------------------------------------------------------------------------------------------
# View ensembles and classification metrics
# --------------------------------------------------------------------------------------------------


def ensemble_probabilities(probs: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted mean of per-view class probabilities {view: (V, C)}: (V, C) float64.

    The weights of the given views are normalised to sum to 1 (weights of other views are ignored).
    Raises ValueError for no views, differing shapes, a view without a weight, a negative or
    non-finite weight, or weights that are all zero.
    """
    if not probs:
        raise ValueError("no views to ensemble")
    views = sorted(probs)
    missing = [view for view in views if view not in weights]
    if missing:
        raise ValueError(f"no ensemble weight for view(s): {', '.join(missing)}")
    view_weights = np.array([float(weights[view]) for view in views], dtype=np.float64)
    if not np.all(np.isfinite(view_weights)) or np.any(view_weights < 0):
        raise ValueError(f"ensemble weights must be finite and >= 0, got {dict(zip(views, view_weights))}")
    total = view_weights.sum()
    if total <= 0:
        raise ValueError("ensemble weights are all zero")
    arrays = {view: np.asarray(probs[view], dtype=np.float64) for view in views}
    shape = arrays[views[0]].shape
    if len(shape) != 2:
        raise ValueError(f"view {views[0]!r}: probabilities must be 2-D (V, C), got shape {shape}")
    for view, array in arrays.items():
        if array.shape != shape:
            raise ValueError(f"view {view!r}: probabilities shape {array.shape} differs from {shape}")
    combined = np.zeros(shape, dtype=np.float64)
    for view, weight in zip(views, view_weights):
        combined += (weight / total) * arrays[view]
    return combined


def _scores_and_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty 2-D array (V, C), got shape {probs.shape}")
    labels = labels_1d("labels", labels, probs.shape[0]).astype(np.int64)
    return probs, labels


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of scores probs (V, C) against labels (V,); argmax ties go to the lower index."""
    probs, labels = _scores_and_labels(probs, labels)
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of the V rows of probs (V, C) whose label (V,) is among their top-min(k, C) scores.

    Ranking is by descending score with ties to the lower class index (so k = 1 equals `accuracy`).
    """
    probs, labels = _scores_and_labels(probs, labels)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    ranked = _order_descending(probs)[:, : min(k, probs.shape[1])]
    return float(np.mean(np.any(ranked == labels[:, None], axis=1)))


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (C, C) int64 of predictions pred (V,) per true label labels (V,); rows = true class."""
    pred = np.asarray(pred).astype(np.int64)
    if pred.ndim != 1:
        raise ValueError(f"pred must be 1-D (V,), got shape {pred.shape}")
    labels = labels_1d("labels", labels, pred.shape[0]).astype(np.int64)
    for name, values in (("pred", pred), ("labels", labels)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    flat = np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# t-SNE
# --------------------------------------------------------------------------------------------------


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of the L2-normalised rows of features (n, D): (n, 2) float64.

    Uses sklearn's TSNE with PCA initialisation, random_state=seed, a single thread and perplexity
    min(perplexity, max(1, (n - 1) / 3)) so small sets stay valid; the same seed gives the same output.
    Collapsed features (every normalised row the same, as a collapsed or untrained encoder gives) embed
    as one point, zeros (sklearn's Barnes-Hut t-SNE crashes the process on them).
    """
    from sklearn.manifold import TSNE

    features = features_2d("features", features)
    n = features.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 rows, got {n}")
    rows = l2_rows(features)
    if float(rows.var(axis=0).sum()) < 1e-10:
        log.warning("t-SNE: all %d feature rows are the same (collapsed): one point", n)
        return np.zeros((n, 2), np.float64)
    effective_perplexity = min(float(perplexity), max(1.0, (n - 1) / 3.0))
    tsne = TSNE(
        n_components=2,
        init="pca",
        random_state=seed,
        perplexity=effective_perplexity,
        n_jobs=1,
    )
    return np.asarray(tsne.fit_transform(rows), dtype=np.float64)
