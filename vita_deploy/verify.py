"""`python -m vita_deploy.verify`: the earlier spelling of `vita-deploy verify` (vita_deploy/commands/verify.py)."""
import sys

if __name__ == "__main__":
    from vita_deploy.commands.verify import main

    sys.exit(main(prog="python -m vita_deploy.verify"))
