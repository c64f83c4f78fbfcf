"""Reference path of `wsi-mil cv`: runs the `cv:` section of the top-level conf.yaml.

    python tools/slide_level_tasks/cross_validation.py cv.<key>=<value> ...
"""
from wsi_mil.cli.project import project_main

if __name__ == "__main__":
    project_main("cv", __file__)
