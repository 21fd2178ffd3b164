"""The ``tersegate`` command: subcommands come from command modules, each with ``register(subparsers)``.

A command module's ``register`` adds its parser and sets ``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

# Command modules, in help order. Each exposes register(subparsers).
COMMANDS: tuple[str, ...] = (
    "proxy.cli.serve",
    "proxy.cli.check",
    "proxy.cli.compress",
    "proxy.cli.audit",
    "proxy.cli.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tersegate", description="OpenAI-compatible proxy that compresses prompts per team policy."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
