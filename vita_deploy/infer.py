"""`python -m vita_deploy.infer`: the earlier spelling of `vita-deploy infer` (vita_deploy/commands/infer.py)."""
import sys

if __name__ == "__main__":
    from vita_deploy.commands.infer import main

    sys.exit(main(prog="python -m vita_deploy.infer"))
