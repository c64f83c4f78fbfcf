"""Reference path of `wsi-mil linear-probe`: runs the `linear_probe:` section of the top-level conf.yaml.

    python tools/tile_level_tasks/linear_evaluation.py linear_probe.<key>=<value> ...
"""
from wsi_mil.cli.project import project_main

if __name__ == "__main__":
    project_main("linear_probe", __file__)
