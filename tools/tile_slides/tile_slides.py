"""Reference-path entry point of ``wsi-mil tile`` (same Hydra options)."""
from wsi_mil.cli.tile import main

if __name__ == "__main__":
    main()
