"""The ``tersegate`` command line: one module per subcommand, each with ``register(subparsers)``."""

from proxy.cli.main import main

__all__ = ["main"]
