"""Small real HTTP upstreams for tests that need to see exactly what the proxy sends.

`RecordingUpstream` runs an aiohttp server on a free port in its own thread and event loop,
records every request it receives, answers ES-shaped JSON, and can stream a large body.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.processes import free_port


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingUpstream:
    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        if "delay_ms" in request.query:  # a slow search: the request is in flight upstream meanwhile
            await asyncio.sleep(int(request.query["delay_ms"]) / 1000)
        headers = {"X-Elastic-Product": "Elasticsearch"}
        if "stream_mb" in request.query:  # e.g. /acme-big/_search?stream_mb=50
            return await self._stream(request, int(request.query["stream_mb"]), headers)
        if request.path == "/":
            payload = {"name": "rec", "cluster_name": "rec", "version": {"number": "9.1.0"}, "tagline": "You Know, for Search"}
        else:
            payload = {"took": 3, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                       "hits": {"total": {"value": 0, "relation": "eq"}, "max_score": None, "hits": []}}
        return web.Response(body=orjson.dumps(payload), content_type="application/json", headers=headers)

    async def _stream(self, request: web.Request, megabytes: int, headers: dict) -> web.StreamResponse:
        """A search response whose hits add up to `megabytes` MiB, written in 64 KiB chunks."""
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"took":5,"timed_out":false,"_shards":{"total":1,"successful":1,"skipped":0,"failed":0},"hits":{"hits":[')
        prefix, suffix = b'{"_id":"x","_source":{"pad":"', b'"}},'
        chunk = prefix + b"x" * (65536 - len(prefix) - len(suffix)) + suffix  # exactly 64 KiB
        for _ in range(megabytes * 16):
            await response.write(chunk)
        await response.write(b'{"_id":"end"}]}}')
        await response.write_eof()
        return response

    def start(self) -> RecordingUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"upstream-{self.port}")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class ClosingRelay:
    """A node that reads each request whole, hands it to the real node behind it (`target`, "host:port")
    and waits for that node's complete answer, then, for anything but a GET, closes the proxy's
    connection without a byte of it: the request was delivered and acted on, and the proxy cannot
    know. GETs (health checks, the cluster poller) are answered. Runs in its own thread."""

    target: str
    port: int = field(default_factory=free_port)
    delivered: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            host, port = self.target.split(":")
            node_reader, node_writer = await asyncio.open_connection(host, int(port))
            node_writer.write(head[:-2] + b"Connection: close\r\n\r\n" + body)
            await node_writer.drain()
            answer = await node_reader.read()  # the node's whole answer (it closes after it)
            node_writer.close()
            if head.startswith(b"GET "):  # health checks and the cluster poller are answered: the node looks well
                writer.write(answer)
                await writer.drain()
                return
            self.delivered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()  # gone before the response head: the outcome is the node's secret
                                      # (a health check's answer was written whole before this)

    def start(self) -> ClosingRelay:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
            ready.set()
            self._loop.run_forever()
            server.close()
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"relay-{self.port}")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
