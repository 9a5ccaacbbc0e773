"""`vita-deploy serve export-repo|run ...` (see vita_deploy/commands/serve.py)."""
import sys

from vita_deploy.commands.serve import main

sys.exit(main(prog="python -m vita_deploy.serve"))
