"""``tersegate serve [--config config.yaml] [--host H] [--port P]``: run the proxy under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from proxy.cli.check import problems
from proxy.config.model import ConfigErrors, LimitsConfig
from proxy.logs import setup_logging
from proxy.server.app import create_app
from proxy.server.limits import limited_protocol
from proxy.server.services import build_services

__all__ = ["register", "uvicorn_config"]

log = logging.getLogger("tersegate.serve")


def uvicorn_config(
    app: Any, *, host: str, port: int, log_level: str, limits: LimitsConfig | None = None
) -> uvicorn.Config:
    """uvicorn with uvloop and httptools (with the client limits), no access log, our own logging setup."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=limited_protocol(limits or LimitsConfig()),
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        server_header=False,
        proxy_headers=False,
        date_header=False,
    )


def _run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    config, found = problems(path)
    errors = [p for p in found if not p.warning]
    for problem in found:
        print(problem, file=sys.stderr)
    if errors or config is None:
        print(f"{path}: {len(errors)} error(s); not starting", file=sys.stderr)
        return 1
    setup_logging(config.log_level)
    try:
        services = build_services(config)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 1
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    log.info("serving on http://%s:%d (auth: %s, config: %s)", host, port, config.auth, path)
    server = uvicorn.Server(
        uvicorn_config(
            create_app(services), host=host, port=port, log_level=config.log_level, limits=config.limits
        )
    )
    server.run()
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the proxy")
    parser.add_argument("--config", default="config.yaml", help="path to config.yaml (default: %(default)s)")
    parser.add_argument("--host", default=None, help="listen address (default: listen.host)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default: listen.port)")
    parser.set_defaults(func=_run)
