"""The ``edgefl-server`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = sys.argv[1:] if argv is None else argv
    print(f"edgefl-server: {' '.join(args) or '(no command)'}: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
