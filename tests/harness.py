"""Test harness: a real fake OpenAI upstream and real proxies on loopback.

Tests import the helpers from here (``from harness import MakeProxy``); ``conftest.py``
re-exports the fixtures. (Importing from ``conftest`` by name is ambiguous: there are
several conftest.py files.)

``upstream`` (session): a :class:`fake_upstream.FakeUpstream` served by uvicorn
in a thread. ``upstream.url`` has no ``/v1``; ``upstream.requests`` lists what
it received (method, path, query, headers, raw body bytes, stream timings);
``upstream.clear()`` empties it (done before every test by ``make_proxy``).

``make_proxy(config, policies={name: yaml_text}, env={})``: writes
``config.yaml`` (and ``policies/<name>.yaml``) into a fresh folder and serves the
proxy in-process (uvicorn thread, free port). ``config`` is either YAML text, in
which ``{upstream}`` is replaced by the fake's base URL (with ``/v1``), or a
dict (``{upstream}`` works in its strings too; ``{upstream_root}`` is the URL without ``/v1``, for
Anthropic and Azure upstreams) whose top-level keys replace those of :data:`BASE_CONFIG` (an upstream
``fake`` pointing at the fake, ``auth: passthrough``, team ``default`` without
a policy, no audit). ``env`` is set for the test (config reads keys from it).
Returns a :class:`RunningProxy`: ``.url``, ``.base_url`` (with ``/v1``, for
``openai.OpenAI(base_url=...)``), ``.config_path``, ``.services``, ``.stop()``.

``shared_proxy(folder, config, upstream, policies)``: a context manager serving one in-process proxy
for a module-scoped fixture, when starting one per test (compression workers load models) would
cost seconds each.

``spawn_proxy(...)``: same arguments, but runs ``tersegate serve`` as a real
subprocess (for SIGKILL/SIGHUP tests); adds ``.proc`` and ``.log_text()``
(its stderr), ``.stop()`` sends SIGTERM, ``.kill()`` SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_upstream import FakeUpstream, ServerThread

from proxy.cli.serve import uvicorn_config
from proxy.config.model import load_config
from proxy.server.app import create_app
from proxy.server.services import Services, build_services

__all__ = [
    "MakeProxy",
    "RunningProxy",
    "ServerThread",
    "Upstream",
    "make_proxy",
    "serve_in_process",
    "shared_proxy",
    "spawn_proxy",
    "upstream",
]

UPSTREAM_KEY = "sk-upstream-test-0123456789"  # what the fake upstream should receive in auth: keys mode


class Upstream:
    """The running fake upstream: ``url``, ``base_url`` (``url + "/v1"``), ``requests``, ``clear()``."""

    def __init__(self, app: FakeUpstream, server: ServerThread) -> None:
        self.app = app
        self.server = server
        self.url = server.url
        self.base_url = server.url + "/v1"

    @property
    def requests(self) -> list[Any]:
        return self.app.requests

    def clear(self) -> None:
        self.app.clear()

    def last(self) -> Any:
        return self.app.last()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    app = FakeUpstream()
    server = ServerThread(app).start()
    yield Upstream(app, server)
    server.stop()


def base_config(upstream_base_url: str) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "auth": "passthrough",
        "default_team": "default",
        "upstreams": {
            "fake": {"base_url": upstream_base_url, "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 30}
        },
        "default_upstream": "fake",
        "policies_dir": "policies",
        "teams": {"default": {}},
    }


BASE_CONFIG = base_config("http://127.0.0.1:<fake upstream port>/v1")


def write_config_dir(
    folder: Path, config: str | Mapping[str, Any], upstream: Upstream, policies: Mapping[str, str] | None
) -> Path:
    """Write config.yaml and policies/ into ``folder``; return the config path."""
    if not isinstance(config, str):
        config = yaml.safe_dump({**base_config(upstream.base_url), **config}, sort_keys=False)
    text = config.replace("{upstream_root}", upstream.url).replace("{upstream}", upstream.base_url)
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    (folder / "policies").mkdir(exist_ok=True)
    for name, policy in (policies or {}).items():
        (folder / "policies" / f"{name}.yaml").write_text(policy, encoding="utf-8")
    return path


@dataclass
class RunningProxy:
    url: str
    config_path: Path
    services: Services | None = None
    server: ServerThread | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


MakeProxy = Callable[..., RunningProxy]


@pytest.fixture
def make_proxy(upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeProxy]:
    """Factory for in-process proxies; all are stopped at the end of the test."""
    started: list[RunningProxy] = []
    upstream.clear()

    def make(
        config: str | Mapping[str, Any] | None = None,
        *,
        policies: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunningProxy:
        monkeypatch.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        folder = tmp_path / f"proxy{len(started)}"
        folder.mkdir()
        proxy = serve_in_process(folder, config if config is not None else {}, upstream, policies)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def serve_in_process(
    folder: Path, config: str | Mapping[str, Any], upstream: Upstream, policies: Mapping[str, str] | None
) -> RunningProxy:
    """A proxy served in this process from ``config`` written into ``folder``, warm (the caller
    sets the environment its config reads, and stops it)."""
    path = write_config_dir(folder, config, upstream, policies)
    loaded = load_config(path)
    services = build_services(loaded)
    app = create_app(services)
    server = ServerThread(
        app, config=uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning", limits=loaded.limits)
    )
    proxy = RunningProxy(url=server.url, config_path=path, services=services, server=server.start())
    wait_warm(services)
    return proxy


@contextlib.contextmanager
def shared_proxy(
    folder: Path,
    config: str | Mapping[str, Any],
    upstream: Upstream,
    policies: Mapping[str, str] | None = None,
) -> Iterator[RunningProxy]:
    """A proxy for a module-scoped fixture, where the tests only send requests to it: starting a
    proxy with compression policies (its worker processes load their models) costs seconds, so
    one per module, not one per test. Tests using it call ``upstream.clear()`` themselves."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
        proxy = serve_in_process(folder, config, upstream, policies)
        try:
            yield proxy
        finally:
            proxy.stop()


def wait_warm(services: Services, timeout: float = 180) -> None:
    """Wait until nothing is pending warm-up (failures allowed), as a load balancer waits for /readyz:
    compression runs in worker processes that take a moment to start, and a request that arrives
    before them fails open on its latency budget."""
    readiness = getattr(services.rewriter, "readiness", None)
    deadline = time.monotonic() + timeout
    while readiness is not None and time.monotonic() < deadline:
        pending, _failed = readiness()
        if not pending:
            return
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_tersegate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``tersegate ARGS`` as a user runs it: output captured as text, at most 60 s."""
    return subprocess.run([*tersegate_command(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def wait_compression_ready(proxy: Any, timeout: float = 120) -> Any:
    """Wait until the proxy's compression workers are up and warm (``/healthz`` says so), as a load
    balancer would before sending traffic; returns ``proxy`` (a running proxy, or its base URL).
    A proxy that compresses nothing has no ``compression`` entry: nothing to wait for."""
    url = proxy if isinstance(proxy, str) else proxy.url
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/healthz").json().get("compression") not in ("ready", None):
        assert time.monotonic() < deadline, "compression never became ready"
        time.sleep(0.1)
    return proxy


def tersegate_command() -> list[str]:
    exe = shutil.which("tersegate", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "proxy.cli"]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tersegate serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code in (200, 503):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("tersegate serve did not become healthy")


@pytest.fixture
def spawn_proxy(upstream: Upstream, tmp_path: Path) -> Iterator[MakeProxy]:
    """Factory for ``tersegate serve`` subprocesses; all are stopped at the end of the test."""
    started: list[RunningProxy] = []
    upstream.clear()

    def spawn(
        config: str | Mapping[str, Any] | None = None,
        *,
        policies: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunningProxy:
        folder = tmp_path / f"spawned{len(started)}"
        folder.mkdir()
        path = write_config_dir(folder, config if config is not None else {}, upstream, policies)
        port = free_port()
        log_path = folder / "proxy.log"
        proc_env = {**os.environ, "FAKE_UPSTREAM_KEY": UPSTREAM_KEY, **(env or {})}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*tersegate_command(), "serve", "--config", str(path), "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=proc_env,
                cwd=folder,
            )
        proxy = RunningProxy(url=f"http://127.0.0.1:{port}", config_path=path, proc=proc, log_path=log_path)
        started.append(proxy)
        wait_healthy(proxy.url, proc)
        return proxy

    yield spawn
    for proxy in started:
        proxy.stop()
