"""``tersegate compress --team T [--route R] [--explain] < request.json``.

Prints the exact body the proxy would forward for that team: the same rewrite
hook (``build_services(config).rewriter``), the same serialization (orjson for
a rewritten body, the original bytes when nothing changed). ``--explain``
prints a table per text part on stderr (and, for a rule with several steps, a row per step:
its tokens before and after, and its milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from proxy.apis import forwarded_body, route_of
from proxy.config.model import AuditConfig, ConfigErrors, MemoConfig, load_config
from proxy.exchange import Exchange, Rewrite
from proxy.server.expand import offer
from proxy.server.services import build_services

__all__ = ["register", "rewrite_request"]


async def rewrite_request(
    config_path: Path, *, team: str, route: str, body: bytes, headers: Mapping[str, str] | None = None
) -> tuple[bytes, Rewrite]:
    """``(bytes the proxy would forward, what the rewrite hook did)``."""
    config = load_config(config_path)
    if team not in config.teams:
        raise ValueError(f"team {team!r} is not in {config_path} (teams: {', '.join(config.teams)})")
    # The audit sink is not needed to rewrite, and must not open the audit log here; a dry run
    # must not decide the forms live conversations get either (the shared memo stays out of it).
    compression = dataclasses.replace(config.compression, memo=MemoConfig())
    services = build_services(dataclasses.replace(config, audit=AuditConfig(), compression=compression))
    try:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise ValueError("the request body must be a JSON object")
        found = route_of(route)
        # As a running server has: models loaded before requests. The exchange is made after, since its
        # latency budget runs from arrival.
        await services.rewriter.ready()
        exchange = Exchange(
            request_id="compress-cmd",
            method="POST",
            route=found.route,
            team=team,
            key_id=None,
            upstream=config.upstream_for(team, found.api).name,
            started=time.time(),
            compressible=True,
            model=parsed.get("model") if isinstance(parsed.get("model"), str) else None,
            stream=parsed.get("stream") is True,
            api=found.api,
            deployment=found.deployment,
        )
        rewrite = await services.rewriter(exchange, parsed, dict(headers or {}))
        offer(rewrite, found.dialect, parsed)
        out, _ = forwarded_body(body, parsed, rewrite.body, stream=exchange.stream, dialect=found.dialect)
        return out, rewrite
    finally:
        await services.aclose()


def _explain(rewrite: Rewrite, console: Console) -> None:
    table = Table(title=f"policy {rewrite.policy or '-'} ({rewrite.mode})", title_justify="left")
    for name in ("msg", "role", "rule", "compressor", "before", "after", "ms", "note"):
        table.add_column(name, justify="right" if name in ("msg", "before", "after", "ms") else "left")
    for part in rewrite.parts:
        role = part["role"] + (f" ({part['tool']})" if part.get("tool") else "")
        note = part.get("note") or ("reused" if part.get("source") == "memo" else "")
        table.add_row(
            str(part["message"]),
            role,
            part["rule"] or "-",
            part["compressor"] or "-",
            str(part["tokens_before"]),
            str(part["tokens_after"]),
            f"{part['ms']:.1f}" if part["rule"] else "",
            note,
        )
        steps = part.get("steps") or []
        for i, step in enumerate(steps if len(steps) > 1 else []):  # a chain: what each step did
            table.add_row(
                "",
                "",
                f"  step {i + 1}",
                step["compressor"],
                str(step["tokens_before"]),
                str(step["tokens_after"]),
                f"{step['ms']:.1f}",
                step["note"],
            )
    console.print(table)
    before, after = rewrite.tokens_before or 0, rewrite.tokens_after or 0
    saved = f"{100 * (before - after) / before:.1f}%" if before else "0%"
    line = (
        f"tokens {before} -> {after} (saved {before - after}, {saved}); compress {rewrite.compress_ms:.0f} ms"
    )
    if rewrite.fail_open:
        line += f"; fail-open: {rewrite.fail_open}"
    if rewrite.skipped:
        line += f"; skipped: {rewrite.skipped}"
    console.print(line, highlight=False)


def _run(args: argparse.Namespace) -> int:
    route = "/" + args.route.lstrip("/")  # route_of adds a missing /v1
    headers = {"x-tersegate-mode": args.mode} if args.mode else {}
    try:
        out, rewrite = asyncio.run(
            rewrite_request(
                Path(args.config), team=args.team, route=route, body=sys.stdin.buffer.read(), headers=headers
            )
        )
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 1
    except (ValueError, orjson.JSONDecodeError) as exc:
        print(f"tersegate compress: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    if args.explain:
        _explain(rewrite, Console(stderr=True, width=max(100, Console(stderr=True).width)))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compress", help="print the body the proxy would forward for a request on stdin"
    )
    parser.add_argument("--config", default="config.yaml", help="path to config.yaml (default: %(default)s)")
    parser.add_argument("--team", required=True, help="team whose policy applies")
    parser.add_argument("--route", default="/v1/chat/completions", help="API route (default: %(default)s)")
    parser.add_argument("--explain", action="store_true", help="print a per-part table on stderr")
    parser.add_argument(
        "--mode", choices=("off", "shadow"), help="as the X-Tersegate-Mode header (if the policy allows it)"
    )
    parser.set_defaults(func=_run)
