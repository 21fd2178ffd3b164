"""``tersegate check [--config config.yaml]``: validate the config and every policy it references.

``serve`` runs the same validation and refuses to start on errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proxy.config.model import Config, ConfigError, ConfigErrors, load_config
from proxy.policy.model import load_policies

__all__ = ["problems", "register"]


def problems(path: Path) -> tuple[Config | None, list[ConfigError]]:
    """``(config or None, errors and warnings)``; config is None when it cannot be loaded."""
    try:
        config = load_config(path)
    except ConfigErrors as exc:
        return None, list(exc.errors)
    try:
        # Every policy file in policies_dir, referenced or not, so a typo is caught before use.
        policies = load_policies(config, all_files=True)
    except ConfigErrors as exc:
        return config, list(exc.errors)
    return config, list(policies.warnings)


def _run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    config, found = problems(path)
    for problem in found:
        print(problem, file=sys.stderr)
    errors = [p for p in found if not p.warning]
    if errors or config is None:
        print(f"{path}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    warnings = len(found) - len(errors)
    print(
        f"{path}: ok ({len(config.teams)} team(s), {len(config.upstreams)} upstream(s), "
        f"auth: {config.auth}, {warnings} warning(s))"
    )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", help="validate config.yaml and the policies it references")
    parser.add_argument("--config", default="config.yaml", help="path to config.yaml (default: %(default)s)")
    parser.set_defaults(func=_run)
