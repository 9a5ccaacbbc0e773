"""`vita-deploy serve export-repo|run ...` (see vita_deploy/serve/cli.py)."""
import sys

from vita_deploy.serve.cli import main

sys.exit(main(prog="python -m vita_deploy.serve"))
