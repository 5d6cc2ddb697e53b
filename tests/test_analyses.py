"""Tests of cocon.evaluate.analyses against brute-force loops and hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from cocon.evaluate import analyses, figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a), 1e-12) / max(np.linalg.norm(b), 1e-12))


# ------------------------------------------------------------------------------------------ basics


def test_l2_rows_unit_norm_and_zero_row():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=np.float32)
    out = analyses.l2_rows(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out[0], [0.6, 0.8])
    np.testing.assert_array_equal(out[1], [0.0, 0.0])  # max(norm, eps) keeps the zero row finite
    np.testing.assert_allclose(out[2], [1.0, 0.0])


# --------------------------------------------------------------------------------------- retrieval


def _brute_force_recall(query, query_labels, gallery, gallery_labels, ks, center):
    if center:
        mean = gallery.mean(axis=0)
        query = query - mean
        gallery = gallery - mean
    result = {}
    for k in ks:
        hits = 0
        for q in range(len(query)):
            sims = [(-_cosine(query[q], gallery[g]), g) for g in range(len(gallery))]
            neighbours = [g for _, g in sorted(sims)][: min(k, len(gallery))]
            hits += any(gallery_labels[g] == query_labels[q] for g in neighbours)
        result[k] = hits / len(query)
    return result


@pytest.mark.parametrize("center", [True, False])
def test_retrieval_recall_matches_brute_force(center):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    gallery_labels = rng.integers(0, 4, size=30)
    query_labels = rng.integers(0, 4, size=15)
    gallery = centres[gallery_labels] + 1.5 * rng.normal(size=(30, 8)) + 2.0
    query = centres[query_labels] + 1.5 * rng.normal(size=(15, 8)) + 2.0
    ks = (1, 3, 5, 10, 29, 30, 50)
    got = analyses.retrieval_recall(query, query_labels, gallery, gallery_labels, ks=ks, center=center)
    expected = _brute_force_recall(query, query_labels, gallery, gallery_labels, ks, center)
    assert list(got) == list(ks)
    for k in ks:
        assert got[k] == pytest.approx(expected[k])
    assert got[30] == got[50] == 1.0  # every query label occurs in the gallery
    assert 0.0 < got[1] < 1.0  # the random case is not trivial


def test_retrieval_recall_hand_made_with_tie():
    # Gallery 0 and 1 are identical (a tie): the lower index (label 1) must be ranked first.
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    gallery_labels = np.array([1, 0, 1, 1])
    query = np.array([[2.0, 0.1], [0.1, 1.0]])
    query_labels = np.array([0, 1])
    got = analyses.retrieval_recall(query, query_labels, gallery, gallery_labels, ks=(1, 2, 10), center=False)
    # query 0: ranking 0 (label 1), 1 (label 0) -> miss at k=1, hit at k=2; query 1: hit at k=1.
    assert got == {1: 0.5, 2: 1.0, 10: 1.0}


def test_retrieval_recall_errors():
    x = np.ones((3, 4))
    labels = np.zeros(3, dtype=int)
    with pytest.raises(ValueError):
        analyses.retrieval_recall(np.ones((0, 4)), [], x, labels)
    with pytest.raises(ValueError):
        analyses.retrieval_recall(x, labels, np.ones((3, 5)), labels)
    with pytest.raises(ValueError):
        analyses.retrieval_recall(x, labels[:2], x, labels)


# ----------------------------------------------------------------------------- cosine statistics


def test_cosine_pairs_matches_double_loop():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(9, 5))
    labels = rng.integers(0, 3, size=9)
    same, different = analyses.cosine_pairs(features, labels)
    expected_same, expected_different = [], []
    for i in range(9):
        for j in range(i + 1, 9):
            (expected_same if labels[i] == labels[j] else expected_different).append(_cosine(features[i], features[j]))
    assert same.dtype == different.dtype == np.float64
    np.testing.assert_allclose(same, expected_same, atol=1e-12)
    np.testing.assert_allclose(different, expected_different, atol=1e-12)
    assert len(same) + len(different) == 9 * 8 // 2


def test_class_similarity_matches_all_pairs_and_missing_class_is_nan():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(12, 6))
    labels = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3, 0, 1, 3])  # class 2 has no video
    similarity = analyses.class_similarity(features, labels, num_classes=4)
    assert similarity.shape == (4, 4)
    for a in (0, 1, 3):
        for b in (0, 1, 3):
            pairs = [
                _cosine(features[i], features[j])
                for i in np.flatnonzero(labels == a)
                for j in np.flatnonzero(labels == b)
            ]  # self pairs included on the diagonal, as documented
            assert similarity[a, b] == pytest.approx(np.mean(pairs), abs=1e-12)
    assert np.all(np.isnan(similarity[2])) and np.all(np.isnan(similarity[:, 2]))
    np.testing.assert_allclose(similarity[[0, 1, 3]][:, [0, 1, 3]], similarity[[0, 1, 3]][:, [0, 1, 3]].T)


# ------------------------------------------------------------------------ cross-view consistency


def _symmetric_similarity(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    values = rng.uniform(-1.0, 1.0, size=(num_classes, num_classes))
    values = (values + values.T) / 2
    np.fill_diagonal(values, 1.0)
    return values


def test_nearest_classes_excludes_self_and_nan_and_breaks_ties_low():
    similarity = np.array(
        [
            [1.0, 0.5, 0.5, 0.9, np.nan],
            [0.5, 1.0, 0.2, 0.1, np.nan],
            [0.5, 0.2, 1.0, 0.3, np.nan],
            [0.9, 0.1, 0.3, 1.0, np.nan],
            [np.nan] * 5,
        ]
    )
    nearest = analyses.nearest_classes(similarity, top=2)
    assert nearest.dtype == np.int64 and nearest.shape == (5, 2)
    np.testing.assert_array_equal(nearest[0], [3, 1])  # 1 and 2 tie at 0.5: lower index wins
    np.testing.assert_array_equal(nearest[1], [0, 2])
    np.testing.assert_array_equal(nearest[4], [-1, -1])  # absent class
    for cls in range(4):
        assert cls not in nearest[cls] and 4 not in nearest[cls]
    with pytest.raises(ValueError):
        analyses.nearest_classes(similarity, top=4)  # only 3 valid other classes


def test_cross_view_consistency_identical_and_permuted_views():
    rng = np.random.default_rng(3)
    base = _symmetric_similarity(rng, 10)
    same = analyses.cross_view_consistency({"rgb": base, "flow": base.copy()}, top=5, min_common=4)
    assert same["views"] == ["flow", "rgb"]
    assert same["classes"] == 10 and same["consistent_classes"] == 10
    assert same["common"] == [5] * 10
    assert np.array(same["nearest"]["rgb"]).shape == (10, 5)

    permutation = rng.permutation(10)
    permuted = base[np.ix_(permutation, permutation)]
    mixed = analyses.cross_view_consistency({"rgb": base, "flow": permuted}, top=5, min_common=4)
    nearest_rgb = analyses.nearest_classes(base, 5)
    nearest_flow = analyses.nearest_classes(permuted, 5)
    expected_common = [len(set(nearest_rgb[c]) & set(nearest_flow[c])) for c in range(10)]
    assert mixed["common"] == expected_common
    assert mixed["consistent_classes"] == sum(c >= 4 for c in expected_common)
    assert mixed["consistent_classes"] < 10


def test_cross_view_consistency_missing_class_and_errors():
    rng = np.random.default_rng(4)
    base = _symmetric_similarity(rng, 7)
    holed = base.copy()
    holed[2, :] = np.nan
    holed[:, 2] = np.nan
    result = analyses.cross_view_consistency({"a": base, "b": holed, "c": base}, top=3, min_common=3)
    assert result["classes"] == 6
    assert result["common"][2] == -1
    assert result["consistent_classes"] == 6  # same ranking once class 2 is out of every view
    assert all(2 not in row for row in result["nearest"]["a"])
    with pytest.raises(ValueError):
        analyses.cross_view_consistency({"rgb": base})


# -------------------------------------------------------------------------------- soft alignment


def test_soft_alignment_rows_scaled_without_smoothing():
    rng = np.random.default_rng(5)
    za = rng.normal(size=(6, 16))
    zb = rng.normal(size=(9, 16))
    matrix = analyses.soft_alignment(za, zb, smooth_sigma=0)
    assert matrix.shape == (6, 9) and matrix.dtype == np.float64
    assert matrix.min() >= 0.0 and matrix.max() <= 1.0
    np.testing.assert_allclose(matrix.min(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(matrix.max(axis=1), 1.0, atol=1e-12)
    # a zb whose blocks are all the same makes every row constant -> all ones
    constant = analyses.soft_alignment(za, np.tile(zb[:1], (4, 1)), smooth_sigma=0)
    np.testing.assert_array_equal(constant, np.ones((6, 4)))


def test_soft_alignment_identical_videos_peak_on_diagonal():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(8, 32))
    matrix = analyses.soft_alignment(z, z, smooth_sigma=0)
    np.testing.assert_allclose(np.diag(matrix), matrix.max(axis=1))
    np.testing.assert_allclose(np.diag(matrix), 1.0)


def test_soft_alignment_smoothing_matches_scipy_and_keeps_constants():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(7)
    za = rng.normal(size=(7, 12))
    zb = rng.normal(size=(10, 12))
    raw = analyses.soft_alignment(za, zb, smooth_sigma=0)
    smoothed = analyses.soft_alignment(za, zb, smooth_sigma=1.0)
    assert smoothed.shape == raw.shape
    # sigma 1: radius ceil(3) = 3 = scipy's int(truncate * sigma + 0.5) with truncate 3
    expected = ndimage.gaussian_filter(raw, sigma=1.0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(smoothed, expected, atol=1e-12)
    constant = analyses.soft_alignment(za, np.tile(zb[:1], (5, 1)), smooth_sigma=2.5)
    np.testing.assert_allclose(constant, np.ones((7, 5)), atol=1e-12)


# -------------------------------------------------------------------------- ensembles and metrics


def test_ensemble_probabilities_weights():
    rng = np.random.default_rng(8)
    a = rng.dirichlet(np.ones(5), size=6)
    b = rng.dirichlet(np.ones(5), size=6)
    equal = analyses.ensemble_probabilities({"a": a, "b": b}, {"a": 1.0, "b": 1.0, "unused": 9.0})
    np.testing.assert_allclose(equal, (a + b) / 2)
    weighted = analyses.ensemble_probabilities({"a": a, "b": b}, {"a": 2, "b": 1})
    expected = np.array([[(2 * a[i, j] + b[i, j]) / 3 for j in range(5)] for i in range(6)])
    np.testing.assert_allclose(weighted, expected)
    np.testing.assert_allclose(weighted.sum(axis=1), 1.0)


def test_ensemble_probabilities_errors():
    a = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="flow"):
        analyses.ensemble_probabilities({"rgb": a, "flow": a}, {"rgb": 1.0})
    with pytest.raises(ValueError):
        analyses.ensemble_probabilities({"rgb": a, "flow": a}, {"rgb": 1.0, "flow": -0.5})
    with pytest.raises(ValueError):
        analyses.ensemble_probabilities({"rgb": a, "flow": a}, {"rgb": 0.0, "flow": 0.0})
    with pytest.raises(ValueError):
        analyses.ensemble_probabilities({"rgb": a, "flow": np.ones((2, 4))}, {"rgb": 1, "flow": 1})


def test_accuracy_ties_and_top_k():
    probs = np.array(
        [
            [0.4, 0.4, 0.2],  # tie between 0 and 1 -> predicts 0
            [0.1, 0.3, 0.6],
            [0.3, 0.3, 0.4],  # top-2 by tie rule: 2, then 0 (not 1)
            [0.5, 0.25, 0.25],
        ]
    )
    labels = np.array([1, 2, 1, 0])
    assert analyses.accuracy(probs, labels) == pytest.approx(0.5)
    assert analyses.accuracy(probs, np.array([0, 2, 2, 0])) == 1.0
    assert analyses.top_k_accuracy(probs, labels, 1) == analyses.accuracy(probs, labels)
    assert analyses.top_k_accuracy(probs, labels, 2) == pytest.approx(0.75)
    assert analyses.top_k_accuracy(probs, labels, 5) == 1.0


def test_confusion_matrix_counts():
    pred = np.array([0, 1, 1, 2, 2, 2])
    labels = np.array([0, 1, 2, 2, 2, 0])
    matrix = analyses.confusion_matrix(pred, labels, num_classes=4)
    expected = np.zeros((4, 4), dtype=np.int64)
    for p, t in zip(pred, labels):
        expected[t, p] += 1
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)


# ---------------------------------------------------------------------------------------- t-SNE


def test_tsne_of_collapsed_features_is_one_point_not_a_crash():
    """Every row the same (a collapsed encoder; scaled rows too): sklearn's Barnes-Hut t-SNE used to kill
    the report process with a segmentation fault on these."""
    features = np.tile(np.random.default_rng(0).random(16), (12, 1)) * np.arange(1, 13)[:, None]
    assert np.array_equal(analyses.tsne_embedding(features), np.zeros((12, 2)))
    features[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        analyses.tsne_embedding(features)


def test_tsne_deterministic_and_shape():
    rng = np.random.default_rng(9)
    features = rng.normal(size=(24, 10))
    first = analyses.tsne_embedding(features, seed=3)
    second = analyses.tsne_embedding(features, seed=3)
    assert first.shape == (24, 2) and first.dtype == np.float64
    assert np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError):
        analyses.tsne_embedding(features[:2])


# -------------------------------------------------------------------------------------- figures


def _draw_all(directory) -> dict[str, bytes]:
    rng = np.random.default_rng(10)
    labels = np.repeat(np.arange(3), 5)
    xy = rng.normal(size=(15, 2)) + labels[:, None] * 3.0
    names = ["walk", "run", "jump"]
    paths = {
        "tsne": directory / "tsne.png",
        "hist": directory / "hist.png",
        "align": directory / "align.png",
        "confusion": directory / "confusion.png",
    }
    figures.plot_tsne(xy, labels, names, paths["tsne"], "t-SNE")
    figures.plot_cosine_histograms(rng.uniform(0, 1, 40), rng.uniform(-1, 0.5, 80), paths["hist"], "cosines")
    figures.plot_alignment(rng.uniform(size=(6, 8)), paths["align"], "alignment", "video B", "video A")
    counts = analyses.confusion_matrix(rng.integers(0, 3, 20), rng.integers(0, 3, 20), 3)
    figures.plot_confusion(counts, names, paths["confusion"], "confusion")
    return {name: path.read_bytes() for name, path in paths.items()}


def test_figures_are_png_reproducible_and_atomic(tmp_path):
    first_dir = tmp_path / "first"
    second_dir = tmp_path / "second"
    first = _draw_all(first_dir)
    second = _draw_all(second_dir)
    for name, data in first.items():
        assert len(data) > len(PNG_SIGNATURE), name
        assert data.startswith(PNG_SIGNATURE), name
        assert data == second[name], name
    leftovers = [p.name for p in tmp_path.rglob("*.partial")]
    assert leftovers == []
    written = sorted(p.name for p in first_dir.iterdir())
    assert written == ["align.png", "confusion.png", "hist.png", "tsne.png"]
