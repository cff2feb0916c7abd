"""The `nodegate` console script: `nodegate lab …` drives the rehearsal lab, `nodegate report` builds the ticket report."""
from __future__ import annotations

import argparse
import logging
import sys

from nodegate.core.errors import NodegateError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodegate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress in detail")
    sub = parser.add_subparsers(dest="command", required=True)
    from nodegate.lab import cli as lab_cli
    from nodegate.report import cli as report

    lab_cli.add_parser(sub)
    report.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except NodegateError as exc:
        print(f"nodegate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nodegate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
