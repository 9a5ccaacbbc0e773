"""Export VITA's two graphs to ONNX: see `vita_deploy.export.cli` (or run with --help)."""
import sys

from vita_deploy.export.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="export/to_onnx.py"))
