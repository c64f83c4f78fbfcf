"""Vision-language commands end to end: the mixed-model guard, retrieval, few-shot."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wsi_mil.cli.main import main
from wsi_mil.testing.synthetic_tiles import make_synthetic_tiles, write_tile_features_dir

PROMPTS = "class_prompts={class0: [tumor], class1: normal, class2: stroma}"


@pytest.fixture(scope="module")
def tiles():
    return make_synthetic_tiles(n_per_class=20, n_classes=3, dim=24, signal=2.5, seed=5)


@pytest.fixture(scope="module")
def tiny_plip(tmp_path_factory):
    from wsi_mil.encoders import create_encoder
    from wsi_mil.testing.tiny_models import save_tiny_encoder

    info = save_tiny_encoder("plip", tmp_path_factory.mktemp("plip"))  # embed_dim 24
    info["sha256"] = create_encoder(**info).weights_sha256
    return info


def _stamp(folder, encoder, sha):
    (folder / "meta.json").write_text(json.dumps({"encoder": encoder, "weights_sha256": sha,
                                                  "dataset": folder.name}))
    return folder


def test_zero_shot_refuses_features_of_another_model_unless_allowed(tmp_path, tiles, tiny_plip,
                                                                     capsys):
    folder = _stamp(write_tile_features_dir(tmp_path / "feats", tiles), "biomedclip", "b" * 64)
    args = ["zero-shot", "encoder=plip", f"weights={tiny_plip['weights']}",
            f"tile_features_dir={folder}", "n_bootstrap=0", "image_retrieval_ks=[]", PROMPTS]
    with pytest.raises(SystemExit) as exc:
        main([*args, f"output_dir={tmp_path / 'a'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "ProvenanceMismatchError" in err and "biomedclip" in err
    assert main([*args, f"output_dir={tmp_path / 'b'}", "allow_mixed_models=true"]) == 0
    assert "allowed by allow_mixed_models=true" in (tmp_path / "b" / "zero_shot.log").read_text()
    _stamp(folder, "plip", tiny_plip["sha256"])  # the same model: no error, no warning
    assert main([*args, f"output_dir={tmp_path / 'c'}"]) == 0
    assert "cannot check" not in (tmp_path / "c" / "zero_shot.log").read_text()


def test_text_initialised_few_shot_refuses_features_of_another_model(tmp_path, tiles, tiny_plip):
    train = _stamp(write_tile_features_dir(tmp_path / "train", tiles, split="train"), "plip",
                   "c" * 64)  # same name, other weights
    test = _stamp(write_tile_features_dir(tmp_path / "test", tiles, split="test"), "plip", "c" * 64)
    with pytest.raises(SystemExit) as exc:
        main(["linear-probe", f"features_dir={train}", f"test_features_dir={test}",
              f"output_dir={tmp_path / 'o'}", "n_bootstrap=0", "few_shot.ks=[1]",
              "few_shot.methods=[text_init]", "text.encoder=plip",
              f"text.weights={tiny_plip['weights']}", f"text.{PROMPTS}"])
    assert exc.value.code == 2


def test_a_class_without_prompts_is_an_error_listing_it(tmp_path, tiles, tiny_plip, capsys):
    folder = write_tile_features_dir(tmp_path / "feats", tiles)
    with pytest.raises(SystemExit):
        main(["zero-shot", "encoder=plip", f"weights={tiny_plip['weights']}",
              f"tile_features_dir={folder}", f"output_dir={tmp_path / 'o'}", "n_bootstrap=0",
              "class_prompts={class0: tumor}"])
    assert "['class1', 'class2'] have no prompts" in capsys.readouterr().err


def test_retrieval_from_a_captions_csv_embeds_images_then_captions(tmp_path, tiny_plip, rng):
    from PIL import Image

    root = tmp_path / "captions"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        for j in range(2):  # two captions per image
            rows.append({"path": f"img/{i}.png", "caption": f"tumor tissue {i} {j}",
                         "group": f"p{i // 2}"})
    csv = root / "captions.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    feats = tmp_path / "feats"
    assert main(["extract-tiles", f"dataset={csv}", f"output_dir={feats}", "encoder=plip",
                 f"weights={tiny_plip['weights']}", "device=cpu", "num_workers=0"]) == 0
    folder = feats / "plip" / "captions"
    out = tmp_path / "ret"
    assert main(["retrieval", f"tile_features_dir={folder}", f"captions={csv}", "encoder=plip",
                 f"weights={tiny_plip['weights']}", "text_ks=[1,5]", "n_bootstrap=50",
                 f"output_dir={out}"]) == 0
    table = pd.read_csv(out / "retrieval_image_text.csv")
    assert table.set_index(["direction", "k"])["n_queries"].to_dict() == {
        ("image_to_text", 1): 6, ("image_to_text", 5): 6, ("text_to_image", 1): 12,
        ("text_to_image", 5): 12}
    assert (table["n_groups"] == 3).all() and table[["ci_low", "ci_high"]].notna().all().all()
    queries = pd.read_csv(out / "retrieval_image_text_queries.csv")
    assert len(queries) == 6 + 12
    assert not (out / "retrieval_image_image.csv").exists()  # unlabelled images: no image-image
    assert (out / "retrieval_image_text.md").is_file()


def test_image_image_retrieval_against_a_gallery_with_patient_groups(tmp_path, tiles):
    train = write_tile_features_dir(tmp_path / "train", tiles, split="train")
    test = write_tile_features_dir(tmp_path / "test", tiles, split="test")
    groups = tmp_path / "groups.csv"
    pd.DataFrame({"tile_id": tiles.tile_ids,
                  "group": [f"p{i % 7}" for i in range(len(tiles.tile_ids))]}).to_csv(groups,
                                                                                     index=False)
    out = tmp_path / "ret"
    assert main(["retrieval", f"tile_features_dir={test}", f"gallery_features_dir={train}",
                 f"groups={groups}", "image_ks=[1,3]", "n_bootstrap=50", f"output_dir={out}"]) == 0
    table = pd.read_csv(out / "retrieval_image_image.csv").set_index(["metric", "k"])
    assert table.loc[("acc", 3), "value"] > 0.8 and (table["n_groups"] == 7).all()
    queries = pd.read_csv(out / "retrieval_image_image_queries.csv")
    assert queries["neighbour_1"].isin(tiles.tile_ids[tiles.split == "train"]).all()


def test_few_shot_tile_benchmark_writes_tables_intervals_supports_and_scores(tmp_path, tiles,
                                                                             tiny_plip):
    train = write_tile_features_dir(tmp_path / "train", tiles, split="train")
    test = write_tile_features_dir(tmp_path / "test", tiles, split="test")
    out = tmp_path / "fs"
    assert main(["few-shot", f"features_dir={train}", f"test_features_dir={test}", "ks=[1,2]",
                 "seeds=[0,1]", "methods=[logreg,random_init,text_init,zero_shot]", "cv_folds=2",
                 "head.epochs=5", "n_bootstrap=20", "text.encoder=plip",
                 f"text.weights={tiny_plip['weights']}", f"text.{PROMPTS}", f"output_dir={out}"]) == 0
    table = pd.read_csv(out / "few_shot_table.csv")
    assert table["k"].tolist() == [0, 1, 2]
    for method in ("logreg", "random_init", "text_init"):
        shots = table.set_index("k").loc[[1, 2]]
        assert (shots[f"{method}_ci_low"] <= shots[f"{method}_mean"]).all()
    supports = pd.read_csv(out / "few_shot_supports.csv")
    assert (supports.groupby(["k", "seed"]).size() == supports.groupby(["k", "seed"])["k"].first() * 3).all()
    assert set(supports["unit"]) <= set(f"train:{t}" for t in tiles.tile_ids[tiles.split == "train"])
    scores = np.load(out / "few_shot_tile_scores.npz")
    assert scores["text_init_k2_s1"].shape == ((tiles.split == "test").sum(), 3)
    assert not (out / "few_shot_slide_table.csv").exists()  # no slides known for these tiles


def test_cite_style_slide_few_shot_with_a_local_text_model(tmp_path):
    from wsi_mil.io.features import write_features
    from wsi_mil.testing.tiny_models import save_tiny_bert

    bert = save_tiny_bert(tmp_path / "bert")  # a biomedical LM stand-in, not aligned with images
    rng = np.random.default_rng(0)
    dirs = np.eye(2, 16) * 2.5
    rows = []
    attrs = {"wsi_mil_version": "t", "encoder": "uni", "weights_sha256": "u" * 64}
    for c, label in enumerate(["tumor", "normal"]):
        for s in range(6):
            sid = f"{label}_{s}"
            feats = dirs[c] + rng.normal(size=(10, 16))
            coords = np.zeros((10, 3), np.int64)
            write_features(tmp_path / "features" / f"{sid}.h5", feats, coords, coords[:, :2], attrs)
            rows.append({"slide_id": sid, "patient_id": f"{label}_p{s // 2}", "label": label,
                         "split": "train" if s < 4 else "test"})
    cohort = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(cohort, index=False)
    out = tmp_path / "cite"
    assert main(["few-shot", f"slide_features_dir={tmp_path / 'features'}", f"cohort={cohort}",
                 "sample_by=slide", "ks=[1,2]", "seeds=[0,1]", "methods=[logreg,cite]", "cv_folds=2",
                 "cite.steps=30", f"text.hf_model={bert}", "n_bootstrap=20",
                 "text.class_prompts={tumor: [tumor tissue], normal: [normal tissue]}",
                 f"output_dir={out}"]) == 0
    slide_table = pd.read_csv(out / "few_shot_slide_table.csv")
    assert slide_table["k"].tolist() == [1, 2]
    assert {"cite_mean", "cite_ci_low", "cite_ci_high", "logreg_mean"} <= set(slide_table.columns)
    assert slide_table["logreg_mean"].iloc[-1] >= 0.75  # planted signal: slides are easy
    supports = pd.read_csv(out / "few_shot_supports.csv")
    assert (supports["n_tiles"] == 10).all()  # whole slides
    assert supports.query("k == 2 and seed == 0")["unit"].nunique() == 4  # 2 slides x 2 classes
    votes = pd.read_csv(out / "few_shot_slide_scores.csv")
    assert set(votes["slide_id"]) == {f"{lbl}_{s}" for lbl in ("tumor", "normal") for s in (4, 5)}
    log = (out / "few_shot.log").read_text()
    assert "CITE head: class texts (2, 32)" in log
