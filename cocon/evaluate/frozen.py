"""Frozen-feature evaluation: a kNN classifier and a linear probe on the pooled video features of a
pretrained (or random) network (cocon.evaluate.features), as self-supervised representation work reports
them beside fine-tuning (solo-learn, lightly).

For each, one hyper-parameter is chosen on the validation subset of the training role (the videos training
held out, `train/is_val` of the features file; never the test split): the number of neighbours k for the
kNN, the inverse regularisation C for the probe. The classifier is then fitted on the whole training role
and scored on the test split. kNN: cosine similarity, each of the k nearest training videos votes for its
class with weight exp(similarity / 0.07). Probe: multinomial logistic regression (L-BFGS) on standardised
features. Ties go to the smaller k and C, and to the lower class index.
"""

from __future__ import annotations

import numpy as np

KS = (1, 3, 5, 10, 20, 50)
CS = tuple(10.0**e for e in range(-3, 4))  # 0.001 .. 1000
TEMPERATURE = 0.07
DEFAULT_K, DEFAULT_C = 20, 1.0  # used when there is no validation subset


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(
    train: np.ndarray, labels: np.ndarray, query: np.ndarray, k: int, classes: int, temperature: float = TEMPERATURE
) -> np.ndarray:
    """train (V, D), labels (V,) int, query (Q, D) -> (Q,) int: the class with the largest sum of
    exp(cosine / temperature) over the k most similar training videos (k capped at V)."""
    sims = _unit(query) @ _unit(train).T  # (Q, V)
    k = max(1, min(int(k), len(train)))
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(query), classes))
    weights = np.exp(np.take_along_axis(sims, nearest, axis=1) / temperature)
    np.add.at(votes, (np.arange(len(query))[:, None], labels[nearest]), weights)
    return votes.argmax(axis=1)


def probe_predict(train: np.ndarray, labels: np.ndarray, query: np.ndarray, c: float) -> np.ndarray:
    """A logistic-regression probe with inverse regularisation `c`, fitted on standardised train (V, D)
    with labels (V,); predictions for query (Q, D)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(labels)) < 2:
        return np.full(len(query), labels[0])
    scaler = StandardScaler().fit(train)
    model = LogisticRegression(C=c, max_iter=5000, tol=1e-6)
    model.fit(scaler.transform(np.asarray(train, np.float64)), labels)
    return model.predict(scaler.transform(np.asarray(query, np.float64)))


def _top1(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean()) if len(labels) else float("nan")


def _choose(grid, score) -> tuple:
    """(value, validation top-1) of the first grid value with the best score."""
    scores = [score(v) for v in grid]
    best = int(np.argmax(scores))
    return grid[best], scores[best]


def frozen_eval(features: dict, classes: int) -> dict:
    """{"knn": {"k", "val_top1", "top1"}, "linear": {"C", "val_top1", "top1"}, "n_train", "n_val", "n_test"}
    from the arrays of a features file ({"train/feature", "train/label", "train/is_labeled", "train/is_val",
    "test/feature", "test/label"}): of the labeled training videos, the hyper-parameter chosen on the
    validation subset, then fitted on all of them; top-1 on the test split (fractions)."""
    labeled = np.asarray(features.get("train/is_labeled", np.ones(len(features["train/label"]), bool)), bool)
    xtr, ytr = np.asarray(features["train/feature"])[labeled], np.asarray(features["train/label"])[labeled]
    xte, yte = np.asarray(features["test/feature"]), np.asarray(features["test/label"])
    is_val = np.asarray(features.get("train/is_val", np.zeros(len(labeled), bool)), bool)[labeled]
    fit, val = ~is_val, is_val
    out = {"n_train": int(len(ytr)), "n_val": int(val.sum()), "n_test": int(len(yte))}
    if val.any() and fit.any():
        k, k_val = _choose(KS, lambda k: _top1(knn_predict(xtr[fit], ytr[fit], xtr[val], k, classes), ytr[val]))
        c, c_val = _choose(CS, lambda c: _top1(probe_predict(xtr[fit], ytr[fit], xtr[val], c), ytr[val]))
    else:
        (k, k_val), (c, c_val) = (DEFAULT_K, float("nan")), (DEFAULT_C, float("nan"))
    out["knn"] = {"k": int(k), "val_top1": k_val, "top1": _top1(knn_predict(xtr, ytr, xte, k, classes), yte)}
    out["linear"] = {"C": float(c), "val_top1": c_val, "top1": _top1(probe_predict(xtr, ytr, xte, c), yte)}
    return out
