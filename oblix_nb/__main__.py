"""``python -m oblix_nb <command>``: command-line tools.

    python -m oblix_nb migrate --from sqlite:~/.oblix/sessions.db --to postgresql://user@host/db
    python -m oblix_nb migrate --from ~/.oblix/sessions --to sqlite:~/.oblix/sessions.db   (Oblix SDK files)
"""
from __future__ import annotations

import sys

USAGE = "usage: python -m oblix_nb migrate --from SOURCE --to TARGET [--batch N] [--quiet]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "migrate":
        from .sessions.transfer import main as migrate_main

        return migrate_main(rest)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
