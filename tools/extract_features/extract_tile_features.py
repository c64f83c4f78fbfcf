"""Reference entry point: ``python tools/extract_features/extract_tile_features.py k=v ...``.

Same options as ``wsi-mil extract-tiles`` (wsi_mil/conf/extract_tiles.yaml).
"""
from wsi_mil.cli.extract_tiles import main

if __name__ == "__main__":
    main()
