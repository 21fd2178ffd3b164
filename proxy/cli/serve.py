"""``tersegate serve [--config config.yaml] [--host H] [--port P] [--workers N]``: run the proxy under uvicorn.

With one worker (the default) the proxy is this process. With ``--workers N`` (or
``listen.workers``) this process becomes the supervisor of N worker processes on one
port (:mod:`proxy.server.supervisor`); each worker is this command again, told its
seat through the environment.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn

from proxy.cli.check import problems
from proxy.config.model import Config, ConfigErrors, LimitsConfig
from proxy.logs import setup_logging
from proxy.server.app import create_app
from proxy.server.drain import DrainingServer
from proxy.server.limits import limited_protocol
from proxy.server.seats import WorkerSeat
from proxy.server.services import build_services
from proxy.server.supervisor import Supervisor, bind_socket, worker_command

__all__ = ["register", "uvicorn_config"]

log = logging.getLogger("tersegate.serve")


def uvicorn_config(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str,
    limits: LimitsConfig | None = None,
    shutdown_grace_s: float = 5.0,
) -> uvicorn.Config:
    """uvicorn with uvloop and httptools (with the client limits), no access log, our own logging
    setup; on shutdown, requests in flight get ``shutdown_grace_s`` (see proxy.server.drain)."""
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
        timeout_graceful_shutdown=math.ceil(shutdown_grace_s),  # uvicorn takes whole seconds
        server_header=False,
        proxy_headers=False,
        date_header=False,
    )


def _checked(path: Path) -> Config | None:
    config, found = problems(path)
    errors = [p for p in found if not p.warning]
    for problem in found:
        print(problem, file=sys.stderr)
    if errors or config is None:
        print(f"{path}: {len(errors)} error(s); not starting", file=sys.stderr)
        return None
    return config


def _exit_with(parent_fd: int, server: uvicorn.Server) -> None:
    """Block until the supervisor is gone (its pipe's end of file), then drain and exit."""
    while os.read(parent_fd, 1):
        pass
    log.warning("supervisor gone; draining")
    server.should_exit = True


def _serve_worker(config: Config, seat: WorkerSeat) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reloader takes SIGHUP over
    services = build_services(config, seat=seat)
    app = create_app(services)
    server = DrainingServer(  # the drain runs in each worker (SIGTERM/Ctrl-C: see proxy.server.drain)
        uvicorn_config(
            app,
            host="",
            port=0,
            log_level=config.log_level,
            limits=config.limits,
            shutdown_grace_s=config.shutdown_grace_s,
        )
    )
    threading.Thread(target=_exit_with, args=(seat.parent_fd, server), daemon=True).start()
    server.run(sockets=[socket.socket(fileno=seat.listen_fd)])
    return 0


def _supervise(args: argparse.Namespace, config: Config, host: str, port: int, workers: int) -> int:
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    bound = sock.getsockname()[1]
    log.info(
        "serving on http://%s:%d with %d workers (auth: %s, config: %s)",
        host,
        bound,
        workers,
        config.auth,
        args.config,
    )
    grace = float(getattr(config, "shutdown_grace_s", 30.0))
    command = worker_command(["serve", "--config", str(Path(args.config).resolve())])
    return Supervisor(command, workers, sock, grace_s=grace).run()


def _run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    config = _checked(path)
    if config is None:
        return 1
    seat = WorkerSeat.from_env()
    setup_logging(config.log_level, tag=f"w{seat.index}" if seat else None)
    if seat is not None:
        return _serve_worker(config, seat)
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    workers = config.listen.workers if args.workers is None else args.workers
    if workers > 1:
        return _supervise(args, config, host, port, workers)
    try:
        services = build_services(config)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 1
    log.info("serving on http://%s:%d (auth: %s, config: %s)", host, port, config.auth, path)
    app = create_app(services)
    server = DrainingServer(
        uvicorn_config(
            app,
            host=host,
            port=port,
            log_level=config.log_level,
            limits=config.limits,
            shutdown_grace_s=config.shutdown_grace_s,
        )
    )
    server.run()
    log.info("stopped")
    return 0


def _workers(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 64:
        raise argparse.ArgumentTypeError("must be 1-64")
    return number


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the proxy")
    parser.add_argument("--config", default="config.yaml", help="path to config.yaml (default: %(default)s)")
    parser.add_argument("--host", default=None, help="listen address (default: listen.host)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default: listen.port)")
    parser.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="server processes on the port (default: listen.workers, 1)",
    )
    parser.set_defaults(func=_run)
