"""`wsi-mil` command line: one Hydra app per subcommand."""
