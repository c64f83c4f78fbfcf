"""``wsi-mil linear-probe`` and ``wsi-mil zero-shot`` end to end on small synthetic folders."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsi_mil.cli.main import main
from wsi_mil.testing.synthetic_tiles import make_synthetic_tiles, write_tile_features_dir


@pytest.fixture(scope="module")
def tiles():
    return make_synthetic_tiles(n_per_class=30, n_classes=3, dim=24, signal=2.5, seed=5)


@pytest.fixture(scope="module")
def tiny_plip(tmp_path_factory):
    from wsi_mil.testing.tiny_models import save_tiny_encoder

    return save_tiny_encoder("plip", tmp_path_factory.mktemp("plip"))  # embed_dim 24


def test_linear_probe_with_a_split_csv_writes_csv_and_markdown_tables(tmp_path, tiles):
    folder = write_tile_features_dir(tmp_path / "feats", tiles)
    out = tmp_path / "out"
    code = main(["linear-probe", f"features_dir={folder}", f"split_csv={folder / 'split.csv'}",
                 f"output_dir={out}", "protocol=reference", "portions=[0.2,1.0]", "n_members=3",
                 "n_bootstrap=20"])
    assert code == 0
    for name in ("linear_probe", "linear_probe_macro"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file()
    assert (out / "config.yaml").is_file() and (out / "linear_probe.log").is_file()
    macro = pd.read_csv(out / "linear_probe_macro.csv")
    assert macro["portion"].tolist() == [0.2, 1.0]
    assert macro.loc[1, "n_train"] == 45 and macro.loc[1, "auc"] > 0.85
    long = pd.read_csv(out / "linear_probe.csv")
    assert set(long["class"]) == {"class0", "class1", "class2", "macro"}
    per_tile = pd.read_csv(out / "linear_probe_tile_scores.csv")  # auditable per-tile outputs
    assert len(per_tile) == 2 * 45 and {"tile_id", "label", "pred", "p_class0"} <= set(per_tile.columns)


def test_linear_probe_with_a_test_folder_and_text_initialised_few_shot(tmp_path, tiles, tiny_plip):
    train = write_tile_features_dir(tmp_path / "train", tiles, split="train")
    test = write_tile_features_dir(tmp_path / "test", tiles, split="test")
    out = tmp_path / "out"
    code = main(["linear-probe", f"features_dir={train}", f"test_features_dir={test}",
                 f"output_dir={out}", "n_bootstrap=0", "cv_folds=2", "protocol=reference", "n_members=2",
                 "few_shot.ks=[1,4]", "few_shot.seeds=[0,1]", "few_shot.epochs=5",
                 "few_shot.methods=[logreg,random_init,text_init,zero_shot]",
                 "text.encoder=plip", f"text.weights={tiny_plip['weights']}",
                 "text.class_prompts={class0: [tumor], class1: normal, class2: stroma}"])
    assert code == 0
    table = pd.read_csv(out / "few_shot_table.csv")
    assert table["k"].tolist() == [0, 1, 4]
    assert {"logreg_mean", "random_init_mean", "text_init_mean", "zero_shot_mean"} <= set(table.columns)
    per_seed = pd.read_csv(out / "few_shot.csv")
    assert set(per_seed["seed"]) == {0, 1} and (out / "few_shot_summary.md").is_file()
    supports = pd.read_csv(out / "few_shot_supports.csv")
    assert supports.query("k == 4 and seed == 1")["unit"].nunique() == 12


def test_linear_probe_errors_exit_with_code_2(tmp_path, tiles):
    folder = write_tile_features_dir(tmp_path / "feats", tiles)
    with pytest.raises(SystemExit) as exc:
        main(["linear-probe", f"features_dir={folder}", f"output_dir={tmp_path / 'o'}", "protocol=svm",
              "n_bootstrap=0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["linear-probe", f"features_dir={folder}", f"output_dir={tmp_path / 'o'}", "n_bootstrap=0",
              "few_shot.ks=[1]", "few_shot.methods=[text_init]"])
    assert exc.value.code == 2


def test_zero_shot_tile_mode_with_a_tiny_clip(tmp_path, tiles, tiny_plip):
    folder = write_tile_features_dir(tmp_path / "feats", tiles)
    out = tmp_path / "zs"
    code = main(["zero-shot", "encoder=plip", f"weights={tiny_plip['weights']}",
                 f"tile_features_dir={folder}", f"output_dir={out}", "n_bootstrap=10",
                 "drop_classes=[class2]", "image_retrieval_ks=[1,5]",
                 "class_prompts={class0: [tumor], class1: normal}"])
    assert code == 0
    metrics = pd.read_csv(out / "zero_shot_tiles.csv")
    assert set(metrics["class"]) == {"class0", "class1", "macro"}
    per_tile = pd.read_csv(out / "zero_shot_tile_scores.csv")
    assert len(per_tile) == 60 and set(per_tile["label"]) == {"class0", "class1"}
    retrieval = pd.read_csv(out / "image_retrieval.csv")
    assert retrieval.set_index(["metric", "k"]).loc[("acc", 5), "value"] > 0.9


def test_zero_shot_slide_mode_reads_features_and_cohort(tmp_path, tiny_plip):
    rng = np.random.default_rng(0)
    feats_dir = tmp_path / "features"
    rows = []
    for i in range(6):
        sid = f"s{i}"
        (feats_dir / sid).mkdir(parents=True)
        n = 5 + i
        arr = np.c_[np.zeros((n, 3)), rng.normal(size=(n, 24))].astype(np.float32)
        np.save(feats_dir / sid / "features.npy", arr)  # reference layout (N, 3 + D)
        rows.append({"slide_id": sid, "patient_id": f"p{i}", "label": ["LUAD", "LUSC"][i % 2]})
    rows.append({"slide_id": "no_features", "patient_id": "p9", "label": "LUAD"})
    cohort = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(cohort, index=False)
    out = tmp_path / "zs"
    code = main(["zero-shot", "encoder=plip", f"weights={tiny_plip['weights']}",
                 f"features_dir={feats_dir}", f"cohort={cohort}", f"output_dir={out}",
                 "top_k=[1,3,all]", "n_bootstrap=10",
                 "class_prompts={LUAD: [lung adenocarcinoma], LUSC: lung squamous cell carcinoma}"])
    assert code == 0
    scores = pd.read_csv(out / "zero_shot_slide_scores.csv", dtype={"top_k": str})
    assert len(scores) == 6 * 3 and set(scores["top_k"]) == {"1", "3", "all"}
    macro = pd.read_csv(out / "zero_shot_slides_macro.csv", dtype={"top_k": str})
    assert macro["n_slides"].tolist() == [6, 6, 6] and macro["balanced_accuracy"].between(0, 1).all()


def test_zero_shot_needs_exactly_one_input(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["zero-shot", "encoder=plip", f"output_dir={tmp_path}"])
    assert exc.value.code == 2
