"""config.yaml: parsed and validated once, at load time, into frozen dataclasses.

Every problem is reported as ``file:line: message`` (see :mod:`proxy.config.yamlsource`).
Relative paths (``policies_dir``, ``audit.path``) are resolved against the
config file's folder, so ``tersegate serve --config /etc/tersegate/config.yaml``
works from any working directory.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from proxy.config.yamlsource import ConfigError, ConfigErrors, Fields, Node, default_of, load_yaml

__all__ = [
    "AuditConfig",
    "CompressionConfig",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "LimitsConfig",
    "ListenConfig",
    "MemoConfig",
    "RetrieveConfig",
    "TeamConfig",
    "UpstreamConfig",
    "load_config",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
APIS = ("openai", "anthropic", "azure")
# The environment variable an upstream's key is read from when api_key_env is not given.
_DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "azure": "AZURE_OPENAI_API_KEY",
}


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1  # server processes sharing the port (docs/workers.md)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What one client may hold of the server (enforced by proxy/server/limits.py)."""

    max_header_bytes: int = 64 * 1024  # request line + headers; more gets 431
    max_headers: int = 100  # header fields per request; more gets 431
    header_timeout_s: float = (
        10.0  # from connect (or first byte of the next request) to the end of its headers
    )
    keepalive_timeout_s: float = 15.0  # idle time between requests on a kept-alive connection
    max_connections: int = 2048  # open client connections; requests on more get 503


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    base_url: str  # no trailing slash, e.g. https://api.openai.com/v1
    api_key_env: str | None = "OPENAI_API_KEY"
    # openai: base_url ends in /v1; anthropic: the API root (https://api.anthropic.com);
    # azure: the resource root (https://<resource>.openai.azure.com).
    api: Literal["openai", "anthropic", "azure"] = "openai"
    # azure: deployment -> model, for pricing (not hashed: the config is a dict key in the pool)
    deployments: dict[str, str] = field(default_factory=dict, hash=False)
    timeout_s: float = 600.0  # total time for a non-streaming response
    connect_timeout_s: float = 10.0
    stream_idle_timeout_s: float = 300.0  # max silence between stream chunks
    max_connections: int = 1000
    # How long the provider keeps a conversation's cached prefix: past it, history compaction has
    # nothing cached to lose (docs/compaction.md). None: 5 minutes, 1 hour with ttl: 1h breakpoints.
    cache_idle_s: float | None = None


@dataclass(frozen=True, slots=True)
class TeamConfig:
    name: str
    policy: str | None = None
    upstream: str | None = None
    anthropic_upstream: str | None = None  # for Anthropic routes; else default_anthropic_upstream
    # SHA-256 hex digests of the team's proxy keys (from keys_sha256 and keys_env).
    key_hashes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AuditConfig:
    path: Path | None = None  # None: no audit
    all_routes: bool = False
    include_text: bool = False
    on_error: Literal["fail-open", "fail-closed"] = "fail-open"
    rotate_bytes: int | None = None
    rotate_daily: bool = False
    sqlite: Path | None = None


MEMO_BACKENDS: tuple[str, ...] = ("memory", "sqlite", "redis")


@dataclass(frozen=True, slots=True)
class MemoConfig:
    """Where the first-sent form of every part is kept beyond the in-process LRU (``compression.memo``)."""

    backend: Literal["memory", "sqlite", "redis"] = "memory"
    path: Path | None = None  # sqlite: the database file (relative paths: to config.yaml's folder)
    url: str | None = None  # redis: redis://host:port/db (rediss:// for TLS)
    shared_across_teams: bool = False  # True: one team may reuse a form another team's request made
    max_bytes: int | None = None  # sqlite/memory: pruned (oldest first) past this; None: 1 GiB / 64 MiB
    max_age_s: float = 7 * 24 * 3600.0  # every backend: an entry older than this is gone
    timeout_s: float = 0.5  # one store call; past it the request is served as if the store were down


@dataclass(frozen=True, slots=True)
class RetrieveConfig:
    """Originals of compressed parts, for the model's ``tersegate_expand`` (``compression.retrieve``;
    docs/operations.md sizes it)."""

    ttl_s: float = 2 * 3600.0  # an original is kept this long (longer than the providers' caches)
    max_expansions_per_request: int = 3  # then the call is answered "limit reached"
    max_return_chars: int = 60_000  # one expansion returns at most this much text
    max_bytes: int = 64 * 1024 * 1024  # memory backend only: the originals' own LRU per process


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    memo_bytes: int = 256 * 1024 * 1024
    workers: int = 2  # compression worker processes
    # Compressors that run a model skip longer texts (linear ones, Compressor.cost "linear", take
    # any size): compressing must fit a latency budget (the `tokens` scorer does ~50k characters in
    # ~300 ms on a shared 2-core machine).
    max_part_chars: int = 50_000
    # Larger request bodies are forwarded as they came, unparsed: parsing JSON holds the event
    # loop (~50 ms for 30 MB here), and no model's context holds that much text anyway.
    max_parse_bytes: int = 8 * 1024 * 1024
    memo: MemoConfig = MemoConfig()
    retrieve: RetrieveConfig = RetrieveConfig()


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    listen: ListenConfig = ListenConfig()
    auth: Literal["keys", "passthrough"] = "passthrough"
    default_team: str = "default"
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    default_upstream: str = "openai"
    default_anthropic_upstream: str | None = None
    policies_dir: Path = Path("policies")
    max_body_bytes: int = 32 * 1024 * 1024
    audit: AuditConfig = AuditConfig()
    compression: CompressionConfig = CompressionConfig()
    limits: LimitsConfig = LimitsConfig()
    teams: dict[str, TeamConfig] = field(default_factory=dict)
    log_level: str = "info"
    shutdown_grace_s: float = 30.0  # on SIGTERM/SIGINT: how long requests in flight may still run
    access_log: Path | None = None  # JSON lines, one per proxied request (proxy.server.access)
    # Positions of team policy references, for policy errors that point into config.yaml.
    team_lines: dict[str, int] = field(default_factory=dict)

    def upstream_for(self, team: str, api: str = "openai") -> UpstreamConfig:
        """The upstream serving ``team``'s requests of ``api`` (Anthropic routes have their own
        choice: the team's ``anthropic_upstream``, else ``default_anthropic_upstream``, else the
        only upstream with ``api: anthropic``, else the team's OpenAI upstream as before)."""
        team_cfg = self.teams.get(team)
        if api == "anthropic":
            name = (team_cfg.anthropic_upstream if team_cfg else None) or self.anthropic_default()
            if name is not None:
                return self.upstreams[name]
        name = team_cfg.upstream if team_cfg and team_cfg.upstream else self.default_upstream
        return self.upstreams[name]

    def anthropic_default(self) -> str | None:
        if self.default_anthropic_upstream is not None:
            return self.default_anthropic_upstream
        named = [u.name for u in self.upstreams.values() if u.api == "anthropic"]
        return named[0] if len(named) == 1 else None

    def team_for_key_hash(self, key_hash: str) -> str | None:
        for team in self.teams.values():
            if key_hash in team.key_hashes:
                return team.name
        return None


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _parse_upstream(name: str, node: Node, errors: list[ConfigError]) -> UpstreamConfig:
    f = Fields(node, errors, what=f"upstreams.{name}")
    base_url = f.get("base_url", str, "", required=True).rstrip("/")
    f.check(
        "base_url",
        lambda v: urlsplit(str(v)).scheme in ("http", "https") and bool(urlsplit(str(v)).netloc),
        "must be an http(s) URL",
    )
    api = f.get_field(UpstreamConfig, "api", str)
    f.check("api", lambda v: v in APIS, "must be openai, anthropic or azure")
    if api in ("anthropic", "azure"):
        root = "https://api.anthropic.com" if api == "anthropic" else "https://<resource>.openai.azure.com"
        f.check(
            "base_url",
            lambda v: not str(v).rstrip("/").endswith("/v1"),
            f"is the API root for api: {api} ({root}), without /v1",
        )
    deployments = _parse_deployments(f, api, errors)
    api_key_env = f.get("api_key_env", str, _DEFAULT_KEY_ENV.get(api, "OPENAI_API_KEY"))
    f.check("api_key_env", lambda v: bool(_ENV_NAME.match(str(v))), "must be an environment variable name")
    for key in ("timeout_s", "connect_timeout_s", "stream_idle_timeout_s", "max_connections", "cache_idle_s"):
        f.check(key, _positive, "must be a positive number")
    upstream = UpstreamConfig(
        name=name,
        base_url=base_url,
        api_key_env=api_key_env,
        timeout_s=f.get_field(UpstreamConfig, "timeout_s", float),
        connect_timeout_s=f.get_field(UpstreamConfig, "connect_timeout_s", float),
        stream_idle_timeout_s=f.get_field(UpstreamConfig, "stream_idle_timeout_s", float),
        max_connections=f.get_field(UpstreamConfig, "max_connections", int),
        api="anthropic" if api == "anthropic" else "azure" if api == "azure" else "openai",
        deployments=deployments,
        cache_idle_s=f.get("cache_idle_s", float, None),
    )
    f.finish()
    return upstream


def _parse_deployments(f: Fields, api: str, errors: list[ConfigError]) -> dict[str, str]:
    node = f.node_of("deployments")
    raw = f.get("deployments", dict, {})
    if node is None:
        return {}
    if api != "azure":
        errors.append(node.error(f"{f.what}.deployments: only an upstream with api: azure has deployments"))
        return {}
    deployments: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not value:
            line = node.key_lines.get(key, node.line) if isinstance(node.value, dict) else node.line
            errors.append(
                ConfigError(node.file, line, f"{f.what}.deployments.{key}: must be a model name (gpt-4o)")
            )
        else:
            deployments[str(key)] = value
    return deployments


def _parse_team(name: str, node: Node, errors: list[ConfigError], auth: str) -> TeamConfig:
    f = Fields(node, errors, what=f"teams.{name}")
    hashes: set[str] = set()
    for i, digest in enumerate(f.get("keys_sha256", list, [])):
        if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            child = f.node_of("keys_sha256")
            at = child.value[i] if child is not None else node
            errors.append(
                at.error(f"teams.{name}.keys_sha256[{i}] must be 64 hex characters (a SHA-256 digest)")
            )
        else:
            hashes.add(digest.lower())
    keys_env = f.get("keys_env", str, None)
    if keys_env is not None:
        raw = os.environ.get(keys_env)
        if raw is None and auth == "keys":
            at = f.node_of("keys_env") or node
            errors.append(at.error(f"teams.{name}.keys_env: environment variable {keys_env} is not set"))
        for key in (raw or "").split(","):
            if key.strip():
                hashes.add(hashlib.sha256(key.strip().encode()).hexdigest())
    team = TeamConfig(
        name=name,
        policy=f.get_field(TeamConfig, "policy", str),
        upstream=f.get_field(TeamConfig, "upstream", str),
        anthropic_upstream=f.get_field(TeamConfig, "anthropic_upstream", str),
        key_hashes=frozenset(hashes),
    )
    f.finish()
    return team


def _parse_audit(node: Node | None, base: Path, errors: list[ConfigError]) -> AuditConfig:
    if node is None or node.value is None:
        return AuditConfig()
    f = Fields(node, errors, what="audit")
    path = f.get("path", str, None)
    on_error = f.get_field(AuditConfig, "on_error", str)
    f.check("on_error", lambda v: v in ("fail-open", "fail-closed"), "must be fail-open or fail-closed")
    f.check("rotate_bytes", _positive, "must be a positive integer")
    sqlite = f.get("sqlite", str, None)
    audit = AuditConfig(
        path=_resolve(base, path) if path else None,
        all_routes=f.get_field(AuditConfig, "all_routes", bool),
        include_text=f.get_field(AuditConfig, "include_text", bool),
        on_error=on_error
        if on_error in ("fail-open", "fail-closed")
        else default_of(AuditConfig, "on_error"),
        rotate_bytes=f.get_field(AuditConfig, "rotate_bytes", int),
        rotate_daily=f.get_field(AuditConfig, "rotate_daily", bool),
        sqlite=_resolve(base, sqlite) if sqlite else None,
    )
    f.finish()
    return audit


def _parse_memo(node: Node | None, base: Path, errors: list[ConfigError]) -> MemoConfig:
    if node is None or node.value is None:
        return MemoConfig()
    f = Fields(node, errors, what="compression.memo")
    backend = f.get_field(MemoConfig, "backend", str)
    f.check("backend", lambda v: v in MEMO_BACKENDS, f"must be one of {', '.join(MEMO_BACKENDS)}")
    path = f.get("path", str, None)
    url = f.get("url", str, None)
    f.check("url", lambda v: urlsplit(str(v)).scheme in ("redis", "rediss", "unix"), "must be a redis:// URL")
    for key in ("max_bytes", "max_age_s", "timeout_s"):
        f.check(key, _positive, "must be a positive number")
    if backend == "sqlite" and not path:
        errors.append(node.error("compression.memo: backend sqlite needs path (e.g. state/memo.sqlite)"))
    if backend == "redis" and not url:
        errors.append(node.error("compression.memo: backend redis needs url (e.g. redis://127.0.0.1:6379/0)"))
    memo = MemoConfig(
        backend=backend if backend in ("sqlite", "redis") else "memory",
        path=_resolve(base, path) if path else None,
        url=url,
        shared_across_teams=f.get_field(MemoConfig, "shared_across_teams", bool),
        max_bytes=f.get_field(MemoConfig, "max_bytes", int),
        max_age_s=f.get_field(MemoConfig, "max_age_s", float),
        timeout_s=f.get_field(MemoConfig, "timeout_s", float),
    )
    f.finish()
    return memo


def _parse_compression(node: Node | None, base: Path, errors: list[ConfigError]) -> CompressionConfig:
    if node is None or node.value is None:
        return CompressionConfig()
    f = Fields(node, errors, what="compression")
    f.check("memo_bytes", lambda v: isinstance(v, int) and v >= 0, "must be a non-negative integer")
    f.check("workers", _positive, "must be a positive integer")
    f.check("max_part_chars", lambda v: isinstance(v, int) and v >= 0, "must be a non-negative integer")
    f.check("max_parse_bytes", _positive, "must be a positive integer")
    result = CompressionConfig(
        memo_bytes=f.get_field(CompressionConfig, "memo_bytes", int),
        workers=f.get_field(CompressionConfig, "workers", int),
        max_part_chars=f.get_field(CompressionConfig, "max_part_chars", int),
        max_parse_bytes=f.get_field(CompressionConfig, "max_parse_bytes", int),
        memo=_parse_memo(f.node_of("memo"), base, errors),
        retrieve=_parse_retrieve(f.node_of("retrieve"), errors),
    )
    f.finish()
    return result


def _parse_retrieve(node: Node | None, errors: list[ConfigError]) -> RetrieveConfig:
    if node is None or node.value is None:
        return RetrieveConfig()
    f = Fields(node, errors, what="compression.retrieve")
    f.check("ttl_s", _positive, "must be a positive number of seconds")
    for key in ("max_return_chars", "max_bytes"):
        f.check(
            key,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "must be a positive integer",
        )
    f.check(
        "max_expansions_per_request",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "must be an integer >= 0",
    )
    retrieve = RetrieveConfig(
        ttl_s=f.get_field(RetrieveConfig, "ttl_s", float),
        max_expansions_per_request=f.get_field(RetrieveConfig, "max_expansions_per_request", int),
        max_return_chars=f.get_field(RetrieveConfig, "max_return_chars", int),
        max_bytes=f.get_field(RetrieveConfig, "max_bytes", int),
    )
    f.finish()
    return retrieve


def _parse_limits(node: Node | None, errors: list[ConfigError]) -> LimitsConfig:
    if node is None or node.value is None:
        return LimitsConfig()
    f = Fields(node, errors, what="limits")
    for key in ("max_header_bytes", "max_headers", "max_connections"):
        f.check(
            key,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "must be a positive integer",
        )
    for key in ("header_timeout_s", "keepalive_timeout_s"):
        f.check(key, _positive, "must be a positive number of seconds")
    limits = LimitsConfig(
        max_header_bytes=f.get_field(LimitsConfig, "max_header_bytes", int),
        max_headers=f.get_field(LimitsConfig, "max_headers", int),
        header_timeout_s=f.get_field(LimitsConfig, "header_timeout_s", float),
        keepalive_timeout_s=f.get_field(LimitsConfig, "keepalive_timeout_s", float),
        max_connections=f.get_field(LimitsConfig, "max_connections", int),
    )
    f.finish()
    return limits


def _parse_listen(node: Node | None, errors: list[ConfigError]) -> ListenConfig:
    if node is None or node.value is None:
        return ListenConfig()
    f = Fields(node, errors, what="listen")
    f.check("port", lambda v: isinstance(v, int) and 0 <= v <= 65535, "must be a port number 0-65535")
    f.check("workers", lambda v: isinstance(v, int) and 1 <= v <= 64, "must be an integer 1-64")
    listen = ListenConfig(
        host=f.get_field(ListenConfig, "host", str),
        port=f.get_field(ListenConfig, "port", int),
        workers=f.get_field(ListenConfig, "workers", int),
    )
    f.finish()
    return listen


def _parse_mapping_of(node: Node | None, what: str, errors: list[ConfigError]) -> list[tuple[str, Node]]:
    if node is None or node.value is None:
        return []
    if not isinstance(node.value, dict):
        errors.append(node.error(f"{what} must be a mapping of names"))
        return []
    return list(node.value.items())


def _anthropic_problem(config: Config, name: str) -> str | None:
    upstream = config.upstreams.get(name)
    if upstream is None:
        return "is not in upstreams"
    if upstream.api != "anthropic":
        return f"has api: {upstream.api}, not api: anthropic"
    return None


def _cross_check(config: Config, root: Node, errors: list[ConfigError]) -> None:
    if config.default_upstream not in config.upstreams:
        errors.append(
            root.error(
                f"default_upstream {config.default_upstream!r} is not in upstreams", key="default_upstream"
            )
        )
    anthropic = config.default_anthropic_upstream
    if anthropic is not None:
        problem = _anthropic_problem(config, anthropic)
        if problem:
            errors.append(
                root.error(
                    f"default_anthropic_upstream {anthropic!r} {problem}", key="default_anthropic_upstream"
                )
            )
    teams_node = root.value.get("teams") if isinstance(root.value, dict) else None
    for team in config.teams.values():
        line = teams_node.key_lines.get(team.name, teams_node.line) if teams_node else root.line
        team_node = (
            teams_node.value.get(team.name) if teams_node and isinstance(teams_node.value, dict) else None
        )
        if team.upstream and team.upstream not in config.upstreams:
            errors.append(
                ConfigError(
                    root.file, line, f"teams.{team.name}.upstream {team.upstream!r} is not in upstreams"
                )
            )
        problem = _anthropic_problem(config, team.anthropic_upstream) if team.anthropic_upstream else None
        if problem:
            at = team_node.key_lines.get("anthropic_upstream", line) if team_node is not None else line
            errors.append(
                ConfigError(
                    root.file,
                    at,
                    f"teams.{team.name}.anthropic_upstream {team.anthropic_upstream!r} {problem}",
                )
            )
    if config.auth == "keys":
        for upstream in config.upstreams.values():
            if upstream.api_key_env and not os.environ.get(upstream.api_key_env):
                errors.append(
                    root.error(
                        f"upstreams.{upstream.name}.api_key_env: {upstream.api_key_env} is not set "
                        "(auth: keys sends the upstream's key instead of the client's)",
                        key="upstreams",
                    )
                )
    if config.default_team not in config.teams:
        errors.append(root.error(f"default_team {config.default_team!r} is not in teams", key="default_team"))


def load_config(path: Path) -> Config:
    """Load and validate ``path``; raise :class:`ConfigErrors` listing every problem."""
    root = load_yaml(path)
    errors: list[ConfigError] = []
    f = Fields(root, errors, what="config")
    base = path.resolve().parent
    auth = f.get_field(Config, "auth", str)
    f.check("auth", lambda v: v in ("keys", "passthrough"), "must be keys or passthrough")
    f.check("max_body_bytes", _positive, "must be a positive integer")
    f.check("shutdown_grace_s", lambda v: _positive(v) or v == 0, "must be a number of seconds >= 0")
    f.check(
        "log_level",
        lambda v: str(v).lower() in ("debug", "info", "warning", "error"),
        "must be debug, info, warning or error",
    )
    upstreams = {
        name: _parse_upstream(name, node, errors)
        for name, node in _parse_mapping_of(f.node_of("upstreams"), "upstreams", errors)
    }
    teams = {
        name: _parse_team(name, node, errors, auth)
        for name, node in _parse_mapping_of(f.node_of("teams"), "teams", errors)
    }
    teams_node = f.node_of("teams")
    config = Config(
        path=path,
        listen=_parse_listen(f.node_of("listen"), errors),
        auth="keys" if auth == "keys" else "passthrough",
        default_team=f.get_field(Config, "default_team", str),
        upstreams=upstreams,
        default_upstream=f.get_field(Config, "default_upstream", str),
        default_anthropic_upstream=f.get_field(Config, "default_anthropic_upstream", str),
        policies_dir=_resolve(base, str(f.get_field(Config, "policies_dir", str))),
        max_body_bytes=f.get_field(Config, "max_body_bytes", int),
        audit=_parse_audit(f.node_of("audit"), base, errors),
        compression=_parse_compression(f.node_of("compression"), base, errors),
        limits=_parse_limits(f.node_of("limits"), errors),
        teams=teams,
        log_level=str(f.get_field(Config, "log_level", str)).lower(),
        shutdown_grace_s=f.get_field(Config, "shutdown_grace_s", float),
        access_log=_resolve(base, access) if (access := f.get("access_log", str, None)) else None,
        team_lines=dict(teams_node.key_lines) if teams_node is not None else {},
    )
    f.finish()
    _cross_check(config, root, errors)
    if errors:
        raise ConfigErrors(errors)
    return config
