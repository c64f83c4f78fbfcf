"""Reference entry point: ``python tools/slide_level_tasks/get_results.py runs_dir=<dir>``.

Same as ``wsi-mil results`` (config: wsi_mil/conf/results.yaml).
"""
from wsi_mil.cli.results import main

if __name__ == "__main__":
    main()
