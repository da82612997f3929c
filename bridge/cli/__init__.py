"""The commands: the one `layerswarm` dispatcher (main.py) and its subcommands, one module each."""
