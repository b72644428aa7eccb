"""The ``edgefl-server`` command.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``. A module is imported only when its subcommand runs, so ``--help`` and the
server itself never pay for torch unless they need it.
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
    "plugins": ("plugins._registry", "list the installed aggregators, selectors, evaluators..."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its options."""
    parser = argparse.ArgumentParser(
        prog="edgefl-server",
        description="Federated learning server for phones: EDIP over HTTP, FedBuff, ExecuTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(args_list)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
