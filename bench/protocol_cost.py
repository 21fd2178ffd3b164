"""CPU per request of uvicorn's httptools protocol with and without tersegate's client limits.

Feeds the same keep-alive POST to each protocol through an in-memory transport
(no sockets, a trivial ASGI app), 20,000 requests per round, rounds alternating,
and prints the process CPU time per request. This isolates what
``proxy/server/limits.py`` adds on the hot path from the noise of a shared machine.

    python bench/protocol_cost.py [--rounds 4] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.config.model import LimitsConfig
from proxy.server.limits import limited_protocol

BODY = b'{"model":"m","x":1}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\ncontent-type: application/json\r\n"
    b"authorization: Bearer sk-x\r\nuser-agent: wrk\r\ncontent-length: %d\r\n\r\n" % len(BODY)
) + BODY


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def cpu_us_per_request(cls: type[HttpToolsProtocol], n: int) -> float:
    config = Config(app, lifespan="off", log_config=None)
    config.load()
    protocol = cls(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)
    started = time.process_time()
    for _ in range(n):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs
        await asyncio.sleep(0)
    assert not transport.closing, "a request was refused"
    return (time.process_time() - started) / n * 1e6


async def main(rounds: int, n: int) -> None:
    limited = limited_protocol(LimitsConfig())
    for _ in range(rounds):
        plain = await cpu_us_per_request(HttpToolsProtocol, n)
        ours = await cpu_us_per_request(limited, n)
        print(f"uvicorn httptools {plain:.1f} us/request, with limits {ours:.1f} us/request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests))
