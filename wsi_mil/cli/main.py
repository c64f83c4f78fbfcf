"""``wsi-mil <command> [key=value ...]``: dispatch to one Hydra app per subcommand.

Each subcommand lives in ``wsi_mil/cli/<command>.py`` and exposes ``main()``
decorated with ``hydra.main``; its config is ``wsi_mil/conf/<command>.yaml``.
Everything after the command name is handed to Hydra, so ``--help``,
``--cfg job``, ``-m`` (multirun) and ``key=value`` overrides all work.
"""
from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "tile": ("wsi_mil.cli.tile", "find tissue and write DeepZoom tile coordinates per slide"),
    "extract": ("wsi_mil.cli.extract", "encode the tiles of every slide with a frozen encoder"),
    "extract-tiles": ("wsi_mil.cli.extract_tiles", "encode a tile-level dataset (folder or CSV)"),
    "cv": ("wsi_mil.cli.cv", "nested cross-validation of a MIL head on a cohort"),
    "results": ("wsi_mil.cli.results", "aggregate CV runs into one results table"),
    "report": ("wsi_mil.cli.report", "figures + markdown/HTML report of a CV run"),
    "demo": ("wsi_mil.cli.demo", "the whole pipeline on a generated synthetic cohort"),
    "linear-probe": ("wsi_mil.cli.linear_probe", "linear / few-shot evaluation on tile features"),
    "zero-shot": ("wsi_mil.cli.zero_shot", "zero-shot tile / slide classification with a CLIP-style encoder"),
    "retrieval": ("wsi_mil.cli.retrieval", "image-text (captions) and image-image retrieval on tile features"),
    "few-shot": ("wsi_mil.cli.few_shot", "k-shot tile / slide classification (incl. CITE-style head) over seeds"),
    "encoders": ("wsi_mil.cli.listing", "list registered encoders"),
    "models": ("wsi_mil.cli.listing", "list registered MIL heads"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: wsi-mil <command> [key=value ...] [--help]",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()),
        "",
        "`wsi-mil <command> --help` lists that command's options.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from wsi_mil import __version__

        print(__version__)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"wsi-mil: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    # Hydra reads sys.argv; hide the subcommand from it.
    sys.argv = [f"wsi-mil {command}", *argv[1:]]
    if command in ("encoders", "models"):
        return module.main(command)
    result = module.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
