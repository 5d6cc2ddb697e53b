"""Frozen-feature evaluation (kNN and linear probe): right on separable features, at chance on noise, the
hyper-parameters chosen on the validation subset only, never on the test split."""

from __future__ import annotations

import numpy as np

from cocon.evaluate.frozen import CS, KS, frozen_eval, knn_predict, probe_predict


def clusters(n_per_class: int, classes: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features around one random unit centre per class, (n, dim), and their labels (n,)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def features(train, test, val_every: int = 4) -> dict:
    (xtr, ytr), (xte, yte) = train, test
    return {
        "train/feature": xtr,
        "train/label": ytr,
        "train/is_val": np.arange(len(ytr)) % val_every == 0,
        "test/feature": xte,
        "test/label": yte,
    }


def test_separable_features_are_classified_and_noise_is_at_chance():
    good = frozen_eval(features(clusters(20, 4, 16, 0.1, 0), clusters(10, 4, 16, 0.1, 0)), 4)
    assert good["knn"]["top1"] == good["linear"]["top1"] == 1.0
    assert good["knn"]["k"] in KS and good["linear"]["C"] in CS and good["n_val"] == 20 and good["n_test"] == 40
    rng = np.random.default_rng(1)
    noise = {
        "train/feature": rng.normal(size=(400, 16)),
        "train/label": rng.integers(0, 4, 400),
        "train/is_val": np.arange(400) % 4 == 0,
        "test/feature": rng.normal(size=(400, 16)),
        "test/label": rng.integers(0, 4, 400),
    }
    res = frozen_eval(noise, 4)
    assert abs(res["knn"]["top1"] - 0.25) < 0.1 and abs(res["linear"]["top1"] - 0.25) < 0.1
    assert frozen_eval(noise, 4) == res  # deterministic


def test_knn_votes_by_weighted_cosine():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])
    assert list(knn_predict(train, labels, np.array([[1.0, 0.05], [0.05, 1.0]]), 1, 2)) == [0, 1]
    # with k = 3 the two near class-0 neighbours outweigh the far class-1 one, scale does not matter (cosine)
    assert list(knn_predict(train, labels, np.array([[100.0, 10.0]]), 3, 2)) == [0]
    assert list(probe_predict(train, labels, np.array([[1.0, 0.0], [0.0, 1.0]]), 1.0)) == [0, 1]


def test_hyper_parameters_are_chosen_on_validation_never_on_test():
    """Validation videos sit on their own training neighbour (k = 1 is best there); the test videos need a
    large k. The chosen k is the validation's, whatever it does on the test split."""
    rng = np.random.default_rng(2)
    xtr, ytr = clusters(30, 3, 8, 0.8, 3)
    is_val = np.arange(len(ytr)) % 3 == 0
    xtr[is_val] = xtr[np.flatnonzero(~is_val)[: is_val.sum()]] + 1e-3 * rng.normal(size=(is_val.sum(), 8))
    ytr[is_val] = ytr[np.flatnonzero(~is_val)[: is_val.sum()]]
    xte, yte = clusters(30, 3, 8, 0.8, 3)
    res = frozen_eval(
        {"train/feature": xtr, "train/label": ytr, "train/is_val": is_val, "test/feature": xte, "test/label": yte}, 3
    )
    assert res["knn"]["k"] == 1 and res["knn"]["val_top1"] == 1.0
