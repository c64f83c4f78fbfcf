"""The reference-path scripts in tools/ run their stage from the top-level conf.yaml."""
import subprocess
import sys
from pathlib import Path

import pytest

from wsi_mil.cli.common import load_stage_config
from wsi_mil.io.coords import read_coords

ROOT = Path(__file__).resolve().parents[2]


def test_tools_tile_script_reads_its_section_of_conf_yaml(tmp_path, cmu_slide_path):
    out = tmp_path / "tiles"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/tile_slides/tile_slides.py"),
         f"tile.slides={cmu_slide_path}", f"tile.output_dir={out}", "+tile.previews=false"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    coords = read_coords(out / "mpp0.50_px224" / "coords" / "CMU-1-Small-Region.h5")
    assert coords.coords.shape[1] == 3 and len(coords.coords) > 0


def test_stage_config_takes_a_group_option_by_name_and_merges_mappings():
    cfg = load_stage_config("cv", {"model": "chowder", "epochs": 3})
    assert cfg.model.name == "chowder" and cfg.epochs == 3
    cfg = load_stage_config("cv", {"model": {"hparams": {"d_model_attention": 64}}})
    assert cfg.model.name == "abmil" and cfg.model.hparams.d_model_attention == 64


def test_every_stage_of_the_project_config_has_a_package_config():
    from omegaconf import OmegaConf

    from wsi_mil.cli.project import STAGES

    project = OmegaConf.load(ROOT / "conf.yaml")
    for stage, (_, section) in STAGES.items():
        if section in project:
            load_stage_config(stage, project[section])  # merges without error


@pytest.mark.parametrize("script", sorted(p.relative_to(ROOT).as_posix()
                                           for p in (ROOT / "tools").rglob("*.py")))
def test_every_tools_script_shows_its_help(script):
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
