"""The package imports, exposes its version and the `wsi-mil` command lists its subcommands."""
import subprocess
import sys

import pytest

import wsi_mil
from wsi_mil.cli.main import COMMANDS, main
from wsi_mil.errors import RegistryError
from wsi_mil.registry import Registry


def test_version_is_exposed():
    assert wsi_mil.__version__.count(".") == 2


def test_cli_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_exits_with_code_2(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "wsi_mil.cli.main", "--version"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == wsi_mil.__version__


def test_registry_rejects_duplicates_and_lists_choices_for_unknown_names():
    reg = Registry("widget")
    reg.register("a")(dict)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a")(dict)
    with pytest.raises(RegistryError, match="available: a"):
        reg.create("b")
    assert reg.list() == ["a"] and "a" in reg
