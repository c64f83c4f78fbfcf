"""Retrieval recall@k, acc@k and majority vote@k against naive computations."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.retrieval import (
    image_text_retrieval,
    image_to_image_retrieval,
    ranked_gallery,
    recall_at_k,
)
from wsi_mil.testing.synthetic_tiles import make_controlled_embeddings


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_ranking(q, g, exclude=None):
    """Gallery indices by decreasing cosine, ties by index; `exclude` left out."""
    sims = [float(unit(q[None])[0] @ unit(g[j][None])[0]) for j in range(len(g))]
    order = sorted((j for j in range(len(g)) if j != exclude), key=lambda j: (-sims[j], j))
    return order


@pytest.mark.parametrize("max_k", [3, 10, 30])  # partial (argpartition) and full sorts
def test_ranked_gallery_equals_naive_sort(rng, max_k):
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    g[5] = g[9]  # an exact tie: the lower index ranks first
    ranked = ranked_gallery(q, g, max_k=max_k, chunk_size=3)
    for i in range(7):
        assert ranked[i].tolist() == naive_ranking(q[i], g)[:max_k]


def test_recall_at_k_equals_naive_on_random_data_with_several_captions(rng):
    n_img, n_txt, dim = 40, 70, 8
    images = rng.normal(size=(n_img, dim))
    text_to_image = np.concatenate([np.arange(n_img), rng.integers(0, n_img, n_txt - n_img)])
    texts = rng.normal(size=(n_txt, dim)) + 0.8 * images[text_to_image]
    table = image_text_retrieval(images, texts, text_to_image, ks=(1, 5, 10, 50))
    for k in (1, 5, 10, 50):
        i2t = np.mean([any(text_to_image[t] == i for t in naive_ranking(images[i], texts)[:k])
                       for i in range(n_img)])
        t2i = np.mean([text_to_image[t] in naive_ranking(texts[t], images)[:k]
                       for t in range(n_txt)])
        got = table.set_index(["direction", "k"])["recall"]
        assert got[("image_to_text", k)] == pytest.approx(i2t)
        assert got[("text_to_image", k)] == pytest.approx(t2i)
    assert got[("text_to_image", 50)] == 1.0  # k > gallery size: clipped


def test_paired_fixture_has_perfect_recall():
    fx = make_controlled_embeddings()
    table = image_text_retrieval(fx.paired_images, fx.paired_texts)
    assert (table["recall"] == 1.0).all() and sorted(set(table["k"])) == [1, 10, 50]


def naive_image_retrieval(x, y, k):
    acc, mv = [], []
    for i in range(len(x)):
        top = [y[j] for j in naive_ranking(x[i], x, exclude=i)[:k]]
        acc.append(y[i] in top)
        counts = Counter(top)
        best = max(counts.values())
        vote = next(lbl for lbl in top if counts[lbl] == best)  # tie -> best-ranked label
        mv.append(vote == y[i])
    return np.mean(acc), np.mean(mv)


def test_image_to_image_acc_and_majority_vote_equal_naive_leave_self_out(rng):
    y = rng.integers(0, 3, size=45)
    x = rng.normal(size=(45, 6)) + 0.7 * np.eye(6)[y]
    table = image_to_image_retrieval(x, y, ks=(1, 2, 4, 5)).set_index(["metric", "k"])["value"]
    for k in (1, 2, 4, 5):
        acc, mv = naive_image_retrieval(x, y, k)
        assert table[("acc", k)] == pytest.approx(acc)
        assert table[("mv", k)] == pytest.approx(mv)


def test_image_retrieval_never_returns_the_query_itself(rng):
    x = rng.normal(size=(20, 4))
    ranked = ranked_gallery(x, x, max_k=50, exclude_self=True)
    assert ranked.shape == (20, 19)
    assert not (ranked == np.arange(20)[:, None]).any()


def test_image_retrieval_against_a_separate_gallery(rng):
    fx = make_controlled_embeddings()
    table = image_to_image_retrieval(fx.tile_features, fx.tile_labels,
                                     gallery_features=fx.class_directions,
                                     gallery_labels=np.arange(3), ks=(1,))
    assert (table["value"] == 1.0).all()
    with pytest.raises(ConfigError, match="gallery_labels"):
        image_to_image_retrieval(fx.tile_features, fx.tile_labels, gallery_features=fx.tile_features)


def test_recall_rejects_bad_ks_and_unpaired_sets(rng):
    with pytest.raises(ConfigError, match="ks"):
        recall_at_k(rng.normal(size=(3, 2)), rng.normal(size=(3, 2)), np.arange(3), np.arange(3), ks=(0,))
    with pytest.raises(ConfigError, match="text_to_image"):
        image_text_retrieval(rng.normal(size=(3, 2)), rng.normal(size=(4, 2)))


def naive_cluster_bootstrap(values, groups, n_boot, seed, level=0.95):
    """Resample groups with replacement, mean over the drawn groups' items (loop version)."""
    uniq = np.unique(groups)
    index = {g: np.flatnonzero(groups == g) for g in uniq}
    _, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        draws = rng.integers(0, len(uniq), size=(1, len(uniq)))[0]
        items = np.concatenate([index[uniq[d]] for d in draws])
        means.append(values[items].mean())
    alpha = (1 - level) / 2
    return np.quantile(means, alpha), np.quantile(means, 1 - alpha)


def test_group_bootstrap_interval_equals_the_naive_loop(rng):
    from wsi_mil.evaluation.metrics import cluster_bootstrap_mean_ci

    values = rng.random(60) < 0.6
    groups = rng.integers(0, 12, size=60)
    mean, low, high = cluster_bootstrap_mean_ci(values, groups, n_boot=300, seed=4)
    naive_low, naive_high = naive_cluster_bootstrap(values.astype(float), groups, 300, seed=4)
    assert mean == pytest.approx(values.mean())
    assert (low, high) == (pytest.approx(naive_low), pytest.approx(naive_high))
    # Grouped items that agree within a group: a wider interval than the item bootstrap.
    clustered = np.repeat(rng.random(10) < 0.5, 20)
    _, lo_g, hi_g = cluster_bootstrap_mean_ci(clustered, np.repeat(np.arange(10), 20), 500)
    _, lo_i, hi_i = cluster_bootstrap_mean_ci(clustered, None, 500)
    assert hi_g - lo_g > 2 * (hi_i - lo_i)


def test_retrieval_tables_have_intervals_around_the_value(rng):
    n_img = 30
    images = rng.normal(size=(n_img, 8))
    text_to_image = np.repeat(np.arange(n_img), 2)  # two captions per image
    texts = images[text_to_image] + 0.9 * rng.normal(size=(2 * n_img, 8))
    groups = np.repeat(np.arange(10), 3)  # three images per patient
    table = image_text_retrieval(images, texts, text_to_image, ks=(1, 5), image_groups=groups,
                                 n_bootstrap=200)
    assert (table["ci_low"] <= table["recall"]).all() and (table["recall"] <= table["ci_high"]).all()
    assert table.set_index("direction")["n_queries"].to_dict() == {"image_to_text": 30,
                                                                   "text_to_image": 60}
    assert set(table["n_groups"]) == {10}


def test_same_patient_neighbours_can_be_excluded(rng):
    # Two tiles per patient, nearly identical: leave-self-out finds the twin (acc@1 = 1); without
    # the patient's tiles the label must come from another patient.
    y = np.repeat(np.arange(3), 8)
    base = rng.normal(size=(12, 6))
    x = np.repeat(base, 2, axis=0) + 1e-3 * rng.normal(size=(24, 6))
    patients = np.repeat(np.arange(12), 2)
    with_twin = image_to_image_retrieval(x, y, ks=(1,), groups=patients)
    assert with_twin.set_index("metric").loc["acc", "value"] == 1.0
    table, ranked = image_to_image_retrieval(x, y, ks=(1, 3), groups=patients, exclude_same_group=True,
                                             return_neighbours=True)
    assert not (patients[ranked] == patients[:, None]).any()
    assert table.set_index(["metric", "k"]).loc[("acc", 1), "value"] < 1.0
    with pytest.raises(ConfigError, match="exclude_same_group"):
        image_to_image_retrieval(x, y, exclude_same_group=True)
