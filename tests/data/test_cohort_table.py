"""Cohort CSV validation: named errors listing the offending rows, label encoding."""
from __future__ import annotations

import pandas as pd
import pytest

from wsi_mil.data.cohort import make_cohort, read_cohort
from wsi_mil.errors import CohortError, MissingFeaturesError


def write(tmp_path, rows):
    path = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_string_labels_are_encoded_in_sorted_order(tmp_path):
    path = write(tmp_path, {"slide_id": ["a", "b", "c"], "patient_id": ["p1", "p2", "p3"],
                            "label": ["tumor", "normal", "tumor"]})
    cohort = read_cohort(path, "classification")
    assert cohort.classes == ["normal", "tumor"]
    assert cohort.y.tolist() == [1, 0, 1]
    assert cohort.n_outputs == 1
    assert cohort.name == "cohort"


def test_integer_labels_keep_their_values_as_classes(tmp_path):
    path = write(tmp_path, {"slide_id": ["a", "b", "c"], "patient_id": ["p1", "p2", "p3"], "label": [2, 0, 5]})
    cohort = read_cohort(path, "classification")
    assert cohort.classes == [0, 2, 5] and cohort.y.tolist() == [1, 0, 2] and cohort.n_outputs == 3


def test_missing_columns_are_named(tmp_path):
    path = write(tmp_path, {"slide_id": ["a"], "patient_id": ["p"]})
    with pytest.raises(CohortError, match=r"\['time', 'event'\]"):
        read_cohort(path, "survival")


def test_duplicate_slide_ids_list_the_rows(tmp_path):
    path = write(tmp_path, {"slide_id": ["a", "a", "b"], "patient_id": ["p1", "p2", "p3"], "label": [0, 1, 0]})
    with pytest.raises(CohortError, match="duplicate slide ids") as err:
        read_cohort(path, "classification")
    assert "line 2" in str(err.value) and "line 3" in str(err.value)


def test_patient_with_conflicting_labels_is_an_error(tmp_path):
    path = write(tmp_path, {"slide_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"], "label": [0, 1, 0]})
    with pytest.raises(CohortError, match="conflicting labels") as err:
        read_cohort(path, "classification")
    assert "'p1'" in str(err.value) and "'p2'" not in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), -1.0])
def test_nan_or_negative_times_are_errors(bad):
    df = pd.DataFrame({"slide_id": ["a", "b"], "patient_id": ["p1", "p2"], "time": [3.0, bad], "event": [1, 0]})
    with pytest.raises(CohortError, match="negative survival times"):
        make_cohort(df, "survival")


def test_slides_without_features_are_listed():
    df = pd.DataFrame({"slide_id": ["a", "b"], "patient_id": ["p1", "p2"], "label": [0, 1]})
    cohort = make_cohort(df, "classification")
    with pytest.raises(MissingFeaturesError, match="'b'"):
        cohort.check_features({"a"})
    cohort.check_features({"a", "b", "c"})


def test_survival_cohort_stratifies_by_event():
    df = pd.DataFrame({"slide_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"],
                       "time": [3.0, 3.0, 5.0], "event": [1, 1, 0], "center_id": ["x", "x", "y"]})
    cohort = make_cohort(df, "survival", name="demo")
    assert cohort.strata().tolist() == [1, 1, 0] and cohort.n_outputs == 1
    assert cohort.centers.tolist() == ["x", "x", "y"]
    assert "events=2" in repr(cohort)
