"""The ``edgefl-server`` command.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("edgefl._server", "serve every job folder in a directory to EDIP devices"),
    "demo": ("edgefl._demo", "run the built-in handwritten-digits job with simulated devices"),
    "simulate": ("edgefl._simulate", "run a job folder with simulated devices"),
    "plugins": ("plugins._registry", "list the installed aggregators, selectors, evaluators, trainers"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefl-server",
        description="Federated learning server for phones: EDIP over HTTP, FedBuff, ExecuTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        if name in (sys.argv[1:2] if _argv is None else _argv[:1]):
            importlib.import_module(module).add_arguments(sp)
    return parser


_argv: list[str] | None = None


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
