"""Zero-shot tile classification and MI-Zero slide pooling, with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.zero_shot import (
    class_prompts,
    cosine_logits,
    evaluate_slide_scores,
    make_class_prototypes,
    mizero_pool,
    mizero_slide_scores,
    zero_shot_tiles,
)
from wsi_mil.testing.synthetic_tiles import LookupTextEncoder, make_controlled_embeddings


@pytest.fixture(scope="module")
def fx():
    return make_controlled_embeddings()


def test_prototypes_normalise_each_prompt_before_averaging(fx):
    encoder = LookupTextEncoder(fx.text_table)
    protos = make_class_prototypes(encoder, fx.class_names, fx.templates)
    np.testing.assert_allclose(protos, fx.expected_prototypes, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, rtol=1e-6)
    assert encoder.calls[0] == [t.format(fx.class_names[0]) for t in fx.templates]


def test_class_synonyms_are_averaged_over_names_and_templates(fx):
    encoder = LookupTextEncoder(fx.text_table)
    a, b = fx.class_names[0], fx.class_names[1]
    protos = make_class_prototypes(encoder, [[a, b], b], fx.templates[:1])
    mixed = fx.text_table[fx.templates[0].format(a)] / np.linalg.norm(fx.text_table[fx.templates[0].format(a)])
    mixed = mixed + fx.text_table[fx.templates[0].format(b)] / np.linalg.norm(fx.text_table[fx.templates[0].format(b)])
    np.testing.assert_allclose(protos[0], mixed / np.linalg.norm(mixed), atol=1e-6)
    assert class_prompts([a, b], ["{}", "x {}"]) == [a, f"x {a}", b, f"x {b}"]


def test_zero_shot_tiles_recover_the_known_labels(fx):
    probs, preds = zero_shot_tiles(fx.tile_features, fx.expected_prototypes)
    assert np.array_equal(preds, fx.tile_labels)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    sims = cosine_logits(fx.tile_features * 7.0, fx.expected_prototypes)  # scale-free
    assert np.all(np.abs(sims) <= 1 + 1e-6) and np.array_equal(sims.argmax(1), fx.tile_labels)


def test_mizero_top_k_finds_the_focal_class_and_mean_pooling_does_not(fx):
    focal = {sid: fx.slides[sid] for sid in fx.focal_slides}
    scores = mizero_slide_scores(focal, fx.expected_prototypes, top_ks=(1, 3, 5, "all"))
    pred = scores.set_index(["slide_id", "top_k"])["pred"]
    for sid in fx.focal_slides:
        assert pred[(sid, "1")] == 1 and pred[(sid, "3")] == 1
        assert pred[(sid, "5")] == 0 and pred[(sid, "all")] == 0


def test_mizero_pool_equals_naive_sorted_mean(rng):
    sims = rng.normal(size=(17, 4))
    for k in (1, 2, 5, 17, 40):
        naive = [np.mean(sorted(sims[:, c], reverse=True)[:k]) for c in range(4)]
        np.testing.assert_allclose(mizero_pool(sims, k), naive)
    np.testing.assert_allclose(mizero_pool(sims, None), sims.mean(0))
    np.testing.assert_allclose(mizero_pool(sims, "all"), sims.mean(0))
    with pytest.raises(ConfigError, match="top_k"):
        mizero_pool(sims, 0)


def test_slide_metrics_against_the_cohort_labels(fx):
    scores = mizero_slide_scores(fx.slides, fx.expected_prototypes, top_ks=(1, "all"))
    labels = dict(fx.slide_labels)
    labels.pop(next(iter(labels)))  # a slide missing from the cohort is left out
    table = evaluate_slide_scores(scores, labels, fx.class_names, n_bootstrap=20)
    macro = table[table["class"] == "macro"].set_index(["top_k", "metric"])["value"]
    assert macro[("1", "balanced_accuracy")] == 1.0 and macro[("1", "auc")] == 1.0
    assert macro[("all", "balanced_accuracy")] < 1.0  # the focal slides are missed
    assert set(table["n_slides"]) == {len(fx.slides) - 1}


def test_encoder_without_text_side_is_rejected(fx):
    class ImageOnly:
        has_text = False
        name = "uni"

    with pytest.raises(ConfigError, match="no text side"):
        make_class_prototypes(ImageOnly(), fx.class_names, fx.templates)
    with pytest.raises(ConfigError, match="templates"):
        class_prompts("tumor", ["no placeholder"])
    with pytest.raises(ConfigError, match="same joint space"):
        cosine_logits(np.zeros((2, 5)), fx.expected_prototypes)


@pytest.fixture(scope="module", params=["plip", "biomedclip"])
def tiny_clip(request, tmp_path_factory):
    from wsi_mil.encoders import create_encoder
    from wsi_mil.testing.tiny_models import save_tiny_encoder

    info = save_tiny_encoder(request.param, tmp_path_factory.mktemp(request.param))
    return create_encoder(**info)


def test_real_tiny_clip_encoders_give_normalised_deterministic_prototypes(tiny_clip):
    names, templates = [["tumor", "tumor tissue"], "normal", "stroma"], ["{}", "an image of {}."]
    a = make_class_prototypes(tiny_clip, names, templates)
    b = make_class_prototypes(tiny_clip, names, templates, batch_size=1)
    assert a.shape == (3, tiny_clip.embed_dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batching does not change the prototypes
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 48, 48, 3), dtype=np.uint8))
    with torch.no_grad():
        feats = tiny_clip(tiny_clip.preprocess(tiles)).numpy()  # joint-space image embeddings
    assert feats.shape == (4, tiny_clip.embed_dim)
    sims = cosine_logits(feats, a)
    assert np.abs(sims).max() <= 1 + 1e-5
    np.testing.assert_allclose(sims, cosine_logits(3.0 * feats, a), atol=1e-6)  # scale-free
    probs, preds = zero_shot_tiles(feats, a)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1.0)
    again, _ = zero_shot_tiles(feats, make_class_prototypes(tiny_clip, names, templates))
    np.testing.assert_array_equal(probs, again)
    slide = mizero_slide_scores({"s": feats}, a, top_ks=(2, "all"))
    assert slide["pred"].between(0, 2).all() and len(slide) == 2


def test_templates_may_use_the_musk_and_clip_benchmark_placeholder(fx):
    assert class_prompts("tumor", ["an image of {c}.", "{}"]) == ["an image of tumor.", "tumor"]
    encoder = LookupTextEncoder(fx.text_table)
    braces = make_class_prototypes(encoder, fx.class_names, fx.templates)
    named = make_class_prototypes(encoder, fx.class_names, [t.replace("{}", "{c}") for t in fx.templates])
    np.testing.assert_array_equal(braces, named)
    with pytest.raises(ConfigError, match="placeholders"):
        class_prompts("tumor", ["{c} and {x}"])


def test_a_label_without_prompts_is_an_error_unless_labels_are_asked_for():
    from wsi_mil.evaluation.zero_shot import class_names_for_labels

    with pytest.raises(ConfigError, match=r"\['NORM', 'STR'\] have no prompts"):
        class_names_for_labels(["NORM", "STR", "TUM"], {"TUM": ["tumor"]})
    names = class_names_for_labels(["NORM", "TUM"], {"TUM": ["tumor"]}, labels_as_prompts=True)
    assert names == [["NORM"], ["tumor"]]
