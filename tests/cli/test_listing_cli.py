"""``wsi-mil encoders`` prints a card per encoder; ``wsi-mil models`` the heads."""
from __future__ import annotations

from wsi_mil.cli import listing


def test_encoders_command_prints_dimensions_precision_licence_and_text_side(capsys):
    assert listing.main("encoders") == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "precision cpu/cuda" in lines["encoder"]
    for name, dim in (("musk", "2048"), ("conch", "512")):
        fields = lines[name].split()
        assert fields[1] == dim and fields[-1] == "yes" and "non-commercial" in lines[name]
    assert lines["resnet50"].split()[-1] == "no"


def test_models_command_lists_every_head(capsys):
    assert listing.main("models") == 0
    out = capsys.readouterr().out.split()
    assert {"meanpool", "abmil", "chowder", "dsmil", "transmil", "transmil_ref", "hipt_mil"} <= set(out)
