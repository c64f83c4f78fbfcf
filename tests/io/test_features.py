"""Feature files: our h5 layout, the reference npy layouts, atomic writes."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from wsi_mil.errors import FileFormatError
from wsi_mil.io.features import (
    coords_sha1,
    read_feature_attrs,
    read_features,
    read_reference_features,
    read_tile_features,
    write_features,
    write_reference_features,
    write_tile_features,
)


@pytest.fixture
def arrays(rng):
    feats = rng.normal(size=(5, 8)).astype(np.float32)
    coords = np.column_stack([np.full(5, 12), np.arange(5), np.arange(5) * 2])
    return feats, coords, coords[:, 1:] * 448


def test_h5_round_trip_keeps_arrays_attrs_and_the_storage_dtype(tmp_path, arrays):
    feats, coords, level0 = arrays
    attrs = {"wsi_mil_version": "0.1", "encoder": "histo_stats", "mean": [0.5, 0.5, 0.5],
             "library_versions": {"torch": "2"}, "weights_sha256": None, "tile_size": 224}
    path = write_features(tmp_path / "s.h5", feats, coords, level0, attrs, dtype="float16")
    got = read_features(path)
    assert got.features.dtype == np.float16
    np.testing.assert_allclose(got.features, feats, atol=1e-2)
    np.testing.assert_array_equal(got.coords, coords)
    np.testing.assert_array_equal(got.coords_level0, level0)
    assert got.attrs["encoder"] == "histo_stats" and got.attrs["tile_size"] == 224
    assert got.attrs["mean"] == [0.5, 0.5, 0.5] and got.attrs["weights_sha256"] == ""
    assert got.attrs["library_versions"] == '{"torch": "2"}'
    assert read_feature_attrs(path)["features_dtype"] == "float16"
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]  # no temporary file left


def test_mismatched_shapes_and_unknown_dtypes_are_file_format_errors(tmp_path, arrays):
    feats, coords, level0 = arrays
    with pytest.raises(FileFormatError, match=r"\(N, D\)"):
        write_features(tmp_path / "a.h5", feats[:3], coords, level0, {})
    with pytest.raises(FileFormatError, match="float16"):
        write_features(tmp_path / "a.h5", feats, coords, level0, {}, dtype="int8")
    assert not (tmp_path / "a.h5").exists()


def test_a_trident_style_h5_is_not_read_as_ours(tmp_path):
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        f["features"] = np.zeros((3, 4))
        f["coords"] = np.zeros((3, 2))
    with pytest.raises(FileFormatError, match="not a wsi_mil feature file"):
        read_features(path)
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(FileFormatError):
        read_feature_attrs(tmp_path / "junk.h5")


def test_reference_features_npy_has_coords_in_the_first_three_columns(tmp_path, arrays):
    feats, coords, _ = arrays
    path = write_reference_features(tmp_path / "enc" / "coh" / "s1" / "features.npy", feats,
                                    coords)
    table = np.load(path)
    assert table.shape == (5, 3 + 8)
    got_coords, got_feats = read_reference_features(path)
    np.testing.assert_array_equal(got_coords, coords)
    np.testing.assert_allclose(got_feats, feats)


def test_tile_level_outputs_round_trip(tmp_path, rng):
    feats = rng.normal(size=(3, 4)).astype(np.float32)
    write_tile_features(tmp_path, feats, np.array(["a/1.png", "a/2.png", "b/3.png"]),
                        np.array(["a", "a", "b"]))
    got_feats, ids, labels = read_tile_features(tmp_path)
    np.testing.assert_array_equal(got_feats, feats)
    assert ids.tolist() == ["a/1.png", "a/2.png", "b/3.png"] and labels.tolist() == ["a", "a", "b"]
    with pytest.raises(FileFormatError):
        read_tile_features(tmp_path / "missing")


def test_coords_fingerprint_changes_with_the_tiling(arrays):
    _, coords, _ = arrays
    assert coords_sha1(coords) == coords_sha1(coords.copy())
    assert coords_sha1(coords) != coords_sha1(coords[:-1])
