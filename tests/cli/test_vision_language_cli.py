"""Vision-language commands end to end: the mixed-model guard, retrieval, few-shot."""
from __future__ import annotations

import json

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
