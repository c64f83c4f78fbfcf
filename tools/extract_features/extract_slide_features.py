"""Reference path of `wsi-mil extract`: runs the `extract:` section of the top-level conf.yaml.

    python tools/extract_features/extract_slide_features.py extract.<key>=<value> ...
"""
from wsi_mil.cli.project import project_main

if __name__ == "__main__":
    project_main("extract", __file__)
