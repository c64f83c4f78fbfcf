"""Reference entry point: ``python tools/tile_level_tasks/linear_evaluation.py key=value ...``.

Same as ``wsi-mil linear-probe`` (config: wsi_mil/conf/linear_probe.yaml); the
reference's protocol is ``protocol=reference portions=[0.001,0.005,0.01,0.05,0.1,0.5,1.0]``.
"""
from wsi_mil.cli.linear_probe import main

if __name__ == "__main__":
    main()
