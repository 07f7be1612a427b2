"""The `prune` subcommands, one module each with `run(args) -> int`; `prune/cli.py` parses the arguments
and dispatches here. Each command calls library functions; what several share is in `options.py`."""
