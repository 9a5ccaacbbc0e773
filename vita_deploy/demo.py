"""`python -m vita_deploy.demo`: the earlier spelling of `vita-deploy demo` (vita_deploy/commands/demo.py)."""
import sys

if __name__ == "__main__":
    from vita_deploy.commands.demo import main

    sys.exit(main(prog="python -m vita_deploy.demo"))
