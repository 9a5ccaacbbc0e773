"""Export VITA's two graphs to ONNX: see `vita_deploy.commands.export` (or run with --help)."""
import sys

from vita_deploy.commands.export import main

if __name__ == "__main__":
    sys.exit(main(prog="export/to_onnx.py"))
