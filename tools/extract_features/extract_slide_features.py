"""Reference entry point: ``python tools/extract_features/extract_slide_features.py k=v ...``.

Same options as ``wsi-mil extract`` (wsi_mil/conf/extract.yaml).
"""
from wsi_mil.cli.extract import main

if __name__ == "__main__":
    main()
