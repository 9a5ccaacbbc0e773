"""The commands of `vita-deploy` (vita_deploy/__main__.py), one file per subcommand: argument parsing and printing
only, over the library below (README "Architecture"). `cli.py` is their one error boundary and the argparse types
they share."""
