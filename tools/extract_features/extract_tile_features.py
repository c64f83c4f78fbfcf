"""Reference path of `wsi-mil extract-tiles`: runs the `extract_tiles:` section of the top-level conf.yaml.

    python tools/extract_features/extract_tile_features.py extract_tiles.<key>=<value> ...
"""
from wsi_mil.cli.project import project_main

if __name__ == "__main__":
    project_main("extract_tiles", __file__)
