"""Feature sources: our h5, the reference features.npy layout and TRIDENT/CLAM h5."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from wsi_mil.errors import FileFormatError
from wsi_mil.io.feature_sources import (
    detect_feature_source,
    feature_shape,
    list_feature_slides,
    read_slide_features,
)
from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort


@pytest.mark.parametrize("fmt", ["wsi_mil", "reference", "trident"])
def test_each_layout_is_detected_and_read_as_n_by_d(tmp_path, fmt):
    syn = write_synthetic_cohort(tmp_path, n_patients=3, dim=6, fmt=fmt, seed=2)
    assert detect_feature_source(syn.features_dir) == fmt
    ids = syn.table.slide_id.tolist()
    assert list_feature_slides(syn.features_dir, fmt) == set(ids)
    for slide_id in ids:
        x = read_slide_features(syn.features_dir, slide_id)
        assert x.ndim == 2 and x.shape[1] == 6
        assert feature_shape(syn.features_dir, slide_id, fmt) == x.shape


def test_reference_layout_drops_the_three_metadata_columns(tmp_path):
    d = tmp_path / "s1"
    d.mkdir()
    arr = np.concatenate([np.full((4, 3), 9.0), np.arange(8.0).reshape(4, 2)], axis=1)
    np.save(d / "features.npy", arr)
    np.testing.assert_array_equal(read_slide_features(tmp_path, "s1", "reference"), arr[:, 3:])


def test_trident_batched_features_are_squeezed(tmp_path):
    with h5py.File(tmp_path / "s1.h5", "w") as f:
        f.create_dataset("features", data=np.ones((1, 5, 3)))
        f.create_dataset("coords", data=np.zeros((5, 2)))
    assert detect_feature_source(tmp_path) == "trident"
    assert read_slide_features(tmp_path, "s1").shape == (5, 3)


def test_unknown_folder_or_source_is_a_file_format_error(tmp_path):
    with pytest.raises(FileFormatError, match="no feature file"):
        detect_feature_source(tmp_path)
    with pytest.raises(FileFormatError, match="choose 'auto'"):
        read_slide_features(tmp_path, "x", "zarr")
