"""Build TensorRT engines (trtexec flags): the same command as `vita-deploy build` (vita_deploy/commands/build.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.commands.build import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="engines/build.py"))
