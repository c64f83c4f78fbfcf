"""Coords h5 and reference npy: round trip, layout checks, atomic writes."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from wsi_mil.errors import FileFormatError
from wsi_mil.io.coords import (
    read_coords,
    read_reference_coords,
    write_coords,
    write_reference_coords,
)
from wsi_mil.version import __version__

ATTRS = {"tile_size": 224, "target_mpp": 0.5, "slide_mpp": 0.25, "dz_level": 16,
         "tissue_params": '{"method": "otsu_saturation"}', "slide_path": None}


def test_round_trip_keeps_arrays_dtypes_and_attrs(tmp_path, rng):
    coords = rng.integers(0, 100, (7, 3))
    xy = rng.integers(0, 10**6, (7, 2))
    write_coords(tmp_path / "c" / "s.h5", coords, xy, ATTRS)
    got = read_coords(tmp_path / "c" / "s.h5")
    assert got.coords.dtype == np.int64 and (got.coords == coords).all()
    assert (got.coords_level0 == xy).all() and len(got) == 7
    assert got.attrs["tile_size"] == 224 and got.attrs["tissue_params"].startswith("{")
    assert got.attrs["wsi_mil_version"] == __version__
    assert got.attrs["slide_path"] == ""
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["s.h5"]  # no temp file left


def test_empty_coords_are_allowed(tmp_path):
    write_coords(tmp_path / "e.h5", np.zeros((0, 3)), np.zeros((0, 2)), ATTRS)
    assert read_coords(tmp_path / "e.h5").coords.shape == (0, 3)


def test_mismatched_lengths_are_rejected(tmp_path):
    with pytest.raises(FileFormatError, match="coords"):
        write_coords(tmp_path / "x.h5", np.zeros((2, 3)), np.zeros((3, 2)), ATTRS)


def test_foreign_h5_is_a_file_format_error(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["features"] = np.zeros((3, 4))
    with pytest.raises(FileFormatError, match="missing dataset"):
        read_coords(tmp_path / "f.h5")
    (tmp_path / "t.h5").write_text("text")
    with pytest.raises(FileFormatError, match="cannot read"):
        read_coords(tmp_path / "t.h5")


def test_reference_layout_is_an_n_by_3_npy(tmp_path, rng):
    coords = rng.integers(0, 50, (5, 3))
    path = tmp_path / "ref" / "s1" / "coords.npy"
    write_reference_coords(path, coords)
    assert np.load(path).shape == (5, 3)
    assert (read_reference_coords(path) == coords).all()


def test_failed_write_leaves_the_previous_file(tmp_path, rng):
    path = tmp_path / "s.h5"
    write_coords(path, np.ones((2, 3)), np.ones((2, 2)), ATTRS)
    with pytest.raises(TypeError):
        write_coords(path, np.zeros((4, 3)), np.zeros((4, 2)), {"bad": object()})
    assert len(read_coords(path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]
