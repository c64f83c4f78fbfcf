"""Reference path of `wsi-mil tile`: runs the `tile:` section of the top-level conf.yaml.

    python tools/tile_slides/tile_slides.py tile.<key>=<value> ...
"""
from wsi_mil.cli.project import project_main

if __name__ == "__main__":
    project_main("tile", __file__)
