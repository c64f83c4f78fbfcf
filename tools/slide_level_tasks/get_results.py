"""Reference path of `wsi-mil results`: runs the `results:` section of the top-level conf.yaml.

    python tools/slide_level_tasks/get_results.py results.<key>=<value> ...
"""
from wsi_mil.cli.project import project_main

if __name__ == "__main__":
    project_main("results", __file__)
