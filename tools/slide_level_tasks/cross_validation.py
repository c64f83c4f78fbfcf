"""Reference entry point: ``python tools/slide_level_tasks/cross_validation.py key=value ...``.

Same as ``wsi-mil cv`` (config: wsi_mil/conf/cv.yaml).
"""
from wsi_mil.cli.cv import main

if __name__ == "__main__":
    main()
