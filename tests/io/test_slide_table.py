"""read_slide_table: file, folder, glob, CSV; duplicate ids; missing files allowed."""
from __future__ import annotations

import math

import pytest

from wsi_mil.errors import ConfigError, FileFormatError
from wsi_mil.io.slide_table import read_slide_table


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/s1.svs", "a/s2.TIF", "s3.ndpi", "notes.txt", "s4.mrxs"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_folder_is_searched_recursively_for_slide_extensions(folder):
    table = read_slide_table(folder)
    assert list(table.columns) == ["slide_id", "path", "mpp"]
    assert sorted(table.slide_id) == ["s1", "s2", "s3", "s4"]
    assert table.mpp.isna().all()


def test_single_file_and_glob(folder):
    assert read_slide_table(folder / "s3.ndpi").slide_id.tolist() == ["s3"]
    assert sorted(read_slide_table(str(folder / "**" / "*.svs")).slide_id) == ["s1"]


def test_csv_with_mpp_column_and_relative_paths(tmp_path):
    (tmp_path / "table.csv").write_text("slide_id,path,mpp\nA,slides/a.svs,0.25\nB,/x/b.svs,\n")
    table = read_slide_table(tmp_path / "table.csv")
    assert table.slide_id.tolist() == ["A", "B"]
    assert table.path[0] == str(tmp_path / "slides" / "a.svs")
    assert table.mpp[0] == 0.25 and math.isnan(table.mpp[1])


def test_csv_without_mpp_column_gets_nan(tmp_path):
    (tmp_path / "t.csv").write_text("slide_id,path,label\n007,a.svs,1\n")
    table = read_slide_table(tmp_path / "t.csv")
    assert table.slide_id.tolist() == ["007"]  # ids stay strings
    assert table.mpp.isna().all()


def test_missing_slide_files_are_not_an_error_here(tmp_path):
    (tmp_path / "t.csv").write_text("slide_id,path\nA,/does/not/exist.svs\n")
    assert len(read_slide_table(tmp_path / "t.csv")) == 1


def test_duplicate_slide_ids_are_listed(tmp_path):
    for name in ("x/s1.svs", "y/s1.svs", "y/s2.svs"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(FileFormatError, match=r"duplicate slide ids.*s1.*x/s1\.svs.*y/s1\.svs"):
        read_slide_table(tmp_path)


def test_csv_without_required_columns_names_them(tmp_path):
    (tmp_path / "t.csv").write_text("id,file\nA,a.svs\n")
    with pytest.raises(FileFormatError, match=r"slide_id.*path"):
        read_slide_table(tmp_path / "t.csv")


def test_non_numeric_mpp_is_rejected(tmp_path):
    (tmp_path / "t.csv").write_text("slide_id,path,mpp\nA,a.svs,forty\n")
    with pytest.raises(FileFormatError, match="mpp"):
        read_slide_table(tmp_path / "t.csv")


def test_spec_matching_nothing_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        read_slide_table(tmp_path / "absent")
    with pytest.raises(ConfigError, match="matches no slide"):
        read_slide_table(tmp_path)


def test_links_loops_and_folders_named_like_slides_are_listed_as_skipped_with_a_reason(tmp_path):
    (tmp_path / "good.svs").write_bytes(b"x")
    (tmp_path / "dangling.svs").symlink_to(tmp_path / "gone.svs")
    (tmp_path / "loop.svs").symlink_to(tmp_path / "loop.svs")
    (tmp_path / "folder.tif").mkdir()
    table = read_slide_table(tmp_path)
    assert table["slide_id"].tolist() == ["good"]
    skipped = table.attrs["skipped"]
    assert set(skipped) == {"dangling", "loop", "folder"}
    assert "dangling symbolic link" in skipped["dangling"] and "gone.svs" in skipped["dangling"]
    assert "symbolic link loop" in skipped["loop"]
    assert "folder named like a slide" in skipped["folder"]
    globbed = read_slide_table(str(tmp_path / "*.svs"))
    assert set(globbed.attrs["skipped"]) == {"dangling", "loop"}
