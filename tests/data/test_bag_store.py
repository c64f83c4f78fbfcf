"""Feature store: one contiguous array, sampling per epoch, padded batches with a mask."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from wsi_mil.data.bags import BagStore, collate, sample_tiles
from wsi_mil.errors import ConfigError, EmptyBagError
from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort


@pytest.fixture
def store(rng):
    bags = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 7, 5)]
    return BagStore.from_arrays(bags, ["a", "b", "c"], dtype="float32"), bags


def test_bags_are_views_of_one_contiguous_array(store):
    s, bags = store
    assert s.features.shape == (15, 4) and s.offsets.tolist() == [0, 3, 10, 15]
    np.testing.assert_array_equal(s.bag(1), bags[1])
    assert np.shares_memory(s.bag(1), s.features)


def test_collate_pads_with_zeros_and_masks_padding(store):
    s, bags = store
    x, mask = collate(s, [0, 1], n_tiles=None)
    assert x.shape == (2, 7, 4) and mask.shape == (2, 7)
    assert mask.sum(1).tolist() == [3, 7]
    np.testing.assert_allclose(x[0, :3].numpy(), bags[0])
    assert float(x[0, 3:].abs().sum()) == 0.0


def test_random_sampling_changes_between_epochs_and_first_mode_is_fixed(rng):
    a = sample_tiles(100, 10, rng, "random")
    b = sample_tiles(100, 10, rng, "random")
    assert len(a) == len(set(a.tolist())) == 10 and a.tolist() != b.tolist()
    assert sample_tiles(100, 10, rng, "first").tolist() == list(range(10))
    assert sample_tiles(5, 10, rng, "random").tolist() == list(range(5))
    with pytest.raises(ConfigError, match="first"):
        sample_tiles(5, 2, rng, "best")


def test_empty_bag_is_an_error(rng):
    with pytest.raises(EmptyBagError, match="'b'"):
        BagStore.from_arrays([np.ones((2, 3)), np.ones((0, 3))], ["a", "b"])


def test_from_dir_reads_all_slides_once_and_memmap_store_pickles_by_path(tmp_path):
    syn = write_synthetic_cohort(tmp_path, n_patients=4, dim=8, seed=1)
    ids = syn.table.slide_id.tolist()
    s = BagStore.from_dir(syn.features_dir, ids)
    assert s.features.dtype == np.float32 and len(s) == len(ids)  # float32 by default
    m = BagStore.from_dir(syn.features_dir, ids, memmap_path=tmp_path / "cache.npy")
    np.testing.assert_array_equal(s.features, m.features)
    blob = pickle.dumps(m)
    assert len(blob) < m.nbytes  # the array is not copied into the pickle
    np.testing.assert_array_equal(pickle.loads(blob).bag(2), s.bag(2))


def test_fixed_sampling_draws_one_sample_per_slide_whatever_the_generator(rng):
    a = sample_tiles(100, 10, np.random.default_rng(1), "fixed", slide=3)
    b = sample_tiles(100, 10, np.random.default_rng(2), "fixed", slide=3)
    c = sample_tiles(100, 10, np.random.default_rng(1), "fixed", slide=4)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 10 and a.tolist() != list(range(10))  # a sample, not the top band
    g = np.random.default_rng(5)
    sample_tiles(100, 10, g, "fixed", slide=3)
    assert g.integers(1 << 30) == np.random.default_rng(5).integers(1 << 30)  # rng untouched


def test_non_finite_or_overflowing_features_are_refused_with_the_slide_ids(tmp_path):
    from wsi_mil.errors import NonFiniteFeaturesError

    bad = np.ones((4, 3), dtype=np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(NonFiniteFeaturesError, match=r"slide\(s\) b \(1 row"):
        BagStore.from_arrays([np.ones((2, 3)), bad], ["a", "b"])
    syn = write_synthetic_cohort(tmp_path, n_patients=3, dim=4, seed=1)
    ids = syn.table.slide_id.tolist()
    import h5py

    from wsi_mil.io.feature_sources import resolve_source

    assert resolve_source(syn.features_dir, "auto") == "wsi_mil"
    path = next(p for p in syn.features_dir.iterdir() if ids[1] in p.name)
    with h5py.File(path, "r+") as f:
        key = "features" if "features" in f else next(iter(f))
        x = f[key][()].astype(np.float32)
        x[0, 0] = 1e6  # finite in float32, inf in float16
        del f[key]
        f[key] = x.astype(np.float32)
    BagStore.from_dir(syn.features_dir, ids)  # float32: fine
    with pytest.raises(NonFiniteFeaturesError, match=f"{ids[1]}.*overflowing float16.*feature_dtype=float32"):
        BagStore.from_dir(syn.features_dir, ids, dtype="float16")
