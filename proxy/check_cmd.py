"""``tersegate check [--config config.yaml]``: validate the config and every policy it references.

``serve`` runs the same validation and refuses to start on errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proxy.config import Config, ConfigError, ConfigErrors, load_config

__all__ = ["problems", "register"]


def _policy_files(config: Config) -> list[ConfigError]:
    """Every team's policy must exist as ``<policies_dir>/<name>.yaml``."""
    errors: list[ConfigError] = []
    for team in config.teams.values():
        if team.policy is None:
            continue
        path = config.policies_dir / f"{team.policy}.yaml"
        if not path.is_file():
            line = config.team_lines.get(team.name, 0)
            errors.append(
                ConfigError(str(config.path), line, f"teams.{team.name}.policy: policy file {path} not found")
            )
    return errors


def problems(path: Path) -> tuple[Config | None, list[ConfigError]]:
    """``(config or None, errors and warnings)``; config is None when it cannot be loaded."""
    try:
        config = load_config(path)
    except ConfigErrors as exc:
        return None, list(exc.errors)
    return config, _policy_files(config)


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
