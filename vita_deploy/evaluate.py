"""`python -m vita_deploy.evaluate`: the earlier spelling of `vita-deploy evaluate` (vita_deploy/commands/evaluate.py)."""
import sys

if __name__ == "__main__":
    from vita_deploy.commands.evaluate import main

    sys.exit(main(prog="python -m vita_deploy.evaluate"))
