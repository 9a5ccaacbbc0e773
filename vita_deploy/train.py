"""`python -m vita_deploy.train`: the earlier spelling of `vita-deploy train` (vita_deploy/commands/train.py)."""
import sys

if __name__ == "__main__":
    from vita_deploy.commands.train import main

    sys.exit(main(prog="python -m vita_deploy.train"))
