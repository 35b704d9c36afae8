"""Operating the proxy: reload under load, a broken reload, shadow mode, graceful drain, workers,
the access log. Real proxy processes in front of a real recording upstream."""
from __future__ import annotations

import asyncio
import copy
import re
import signal
import time
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest

from tests.processes import http_post, make_config, tenant, wait_until
from tests.upstreams import RecordingUpstream

ACME = {"Authorization": "ApiKey acme-key"}
SEARCH = "/acme-logs/_search"


@pytest.fixture
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


def plan(rate: float, burst: float, **extra) -> dict:
    bucket = {"rate": rate, "burst": burst}
    return {"search": bucket, "read": bucket, "write": bucket, "admin": bucket,
            "max_concurrent": 64, "max_queue": 256, "max_wait_ms": 0, **extra}


async def hammer(url: str, stop: asyncio.Event, statuses: list, concurrency: int = 8, headers=ACME, path=SEARCH):
    """Keep `concurrency` clients busy until `stop`; record every status (0 for a connection failure)."""
    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.post(url + path, data=b'{"query":{"match_all":{}}}', headers=headers) as r:
                    await r.read()
                    statuses.append(r.status)
            except aiohttp.ClientError:
                statuses.append(0)

    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))


def generation(proxy) -> int:
    return proxy.tenants()["config"]["generation"]


async def test_100_sighups_under_load_fail_nothing_and_the_last_limits_hold(procs, upstream):
    config = make_config([upstream.url], plans={"standard": plan(1e6, 1e7)})
    proxy = procs.proxy(config)
    stop, statuses = asyncio.Event(), []
    load = asyncio.create_task(hammer(proxy.url, stop, statuses))
    for i in range(100):
        changed = copy.deepcopy(config)
        changed["plans"]["standard"] = plan(1e6 + i, 1e7 + i)  # a new limit each time
        proxy.write_config(changed)
        before = generation(proxy)
        proxy.signal(signal.SIGHUP)
        await asyncio.to_thread(wait_until, lambda: generation(proxy) > before, 10, "reload")
    stop.set()
    await load
    assert len(statuses) > 100 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert generation(proxy) == 101
    assert proxy.tenants()["tenants"]["acme"]["buckets"]["search"]["rate"] == 1e6 + 99
    # Now a tight limit: it is in force at once.
    tight = copy.deepcopy(config)
    tight["plans"]["standard"] = plan(0.001, 3)
    proxy.write_config(tight)
    proxy.signal(signal.SIGHUP)
    await asyncio.to_thread(wait_until, lambda: generation(proxy) == 102, 10, "reload")
    codes = await _sequential(proxy.url, 40)
    assert 429 in codes and codes.count(200) < 40


async def _sequential(url: str, n: int, headers=ACME) -> list[int]:
    async with aiohttp.ClientSession() as session:
        codes = []
        for _ in range(n):
            async with session.get(url + SEARCH, headers=headers) as r:
                await r.read()
                codes.append(r.status)
        return codes


async def test_invalid_reload_changes_nothing_and_is_counted(procs, upstream):
    config = make_config([upstream.url], plans={"standard": plan(0.001, 3)})
    proxy = procs.proxy(config)
    before = await _sequential(proxy.url, 10)
    broken = copy.deepcopy(config)
    broken["plans"]["standard"]["search"]["rate"] = -1
    proxy.write_config(broken)
    proxy.signal(signal.SIGHUP)
    await asyncio.to_thread(
        wait_until, lambda: proxy.metric("sluicegate_config_reload_failures_total") == 1, 10, "failure counted"
    )
    status, body = http_post(proxy.admin + "/reload")
    assert status == 400 and b"plans.standard.search.rate" in body
    assert proxy.metric("sluicegate_config_reload_failures_total") == 2
    assert generation(proxy) == 1
    assert "plans.standard.search.rate" in proxy.stderr()
    after = await _sequential(proxy.url, 10)
    assert before.count(200) <= 3 and after.count(200) == 0 and set(after) == {429}  # the old, tight limit still holds


async def test_reload_says_which_changes_wait_for_a_restart(procs, upstream):
    config = make_config([upstream.url])
    proxy = procs.proxy(config)
    changed = copy.deepcopy(config)
    changed["listen"] = "127.0.0.1:1"  # a bound socket cannot move
    changed["plans"]["standard"]["max_concurrent"] = 3  # this applies at once
    proxy.write_config(changed)
    running = config["listen"]
    sentence = f"a restart is needed for listen to move from {running} to 127.0.0.1:1; the rest of the file is in force"
    status, body = http_post(proxy.admin + "/reload")
    assert status == 200 and orjson.loads(body)["message"] == f"generation 2 ({_digest(proxy)}) in force; {sentence}"
    assert f"WARNING sluicegate: config: {sentence}" in proxy.stderr()
    assert generation(proxy) == 2 and proxy.tenants()["tenants"]["acme"]["max_concurrent"] == 3
    async with aiohttp.ClientSession() as session:  # still serving on the old port
        async with session.get(proxy.url + SEARCH, headers=ACME) as r:
            assert r.status == 200
    # Compared with what runs, not with the previous file: the same file again still needs the restart ...
    status, body = http_post(proxy.admin + "/reload")
    assert sentence in orjson.loads(body)["message"]
    # ... and the file back at the running address needs none.
    proxy.write_config(config)
    status, body = http_post(proxy.admin + "/reload")
    assert status == 200 and "restart" not in orjson.loads(body)["message"]


def _digest(proxy) -> str:
    return proxy.tenants()["config"]["hash"]


async def test_shadow_tenant_is_never_refused_but_counted(procs, upstream):
    config = make_config(
        [upstream.url],
        tenants={"acme": tenant("acme", enforce=False)},
        plans={"standard": plan(0.001, 3, max_concurrent=1, max_queue=0)},
        access_log={"path": "-", "sample": 0.0},  # admitted lines sampled away; would-throttles always logged
    )
    proxy = procs.proxy(config)
    stop, statuses = asyncio.Event(), []
    load = asyncio.create_task(hammer(proxy.url, stop, statuses, concurrency=4))
    await asyncio.to_thread(
        wait_until, lambda: proxy.metric("sluicegate_requests_total", tenant="acme", decision="would_throttle") >= 50, 20
    )
    stop.set()
    await load
    assert set(statuses) == {200}
    would = proxy.metric("sluicegate_requests_total", tenant="acme", decision="would_throttle")
    assert would >= 50
    assert proxy.metric("sluicegate_requests_total", tenant="acme", decision="throttled") == 0
    proxy.stop()
    flagged = [line for line in proxy.access_log() if line["decision"] == "would_throttle"]
    assert len(flagged) >= 50 and {line["reason"] for line in flagged} <= {"budget", "concurrency"}
    assert all(line["status"] == 200 for line in flagged)


async def test_sigterm_drains_in_flight_requests_then_exits_0(procs, upstream):
    proxy = procs.proxy(make_config([upstream.url], drain_timeout_s=20))

    async def slow(session):
        async with session.get(proxy.url + SEARCH + "?delay_ms=1500", headers=ACME) as r:
            return r.status, await r.read()

    async with aiohttp.ClientSession() as session:
        requests = [asyncio.create_task(slow(session)) for _ in range(20)]
        await asyncio.to_thread(wait_until, lambda: len([s for s in upstream.seen if "delay_ms" in s.path_qs]) == 20, 10)
        proxy.signal(signal.SIGTERM)
        # The listener closes at once: new connections are refused while the 20 finish.
        await asyncio.to_thread(wait_until, lambda: _refused(proxy.url), 5, "listener closed")
        results = await asyncio.gather(*requests)
    assert [status for status, _ in results] == [200] * 20
    assert all(b'"took"' in body for _, body in results)
    assert await asyncio.to_thread(proxy.proc.wait, 10) == 0


def _refused(url: str) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=0.5).close()
        return False
    except OSError:
        return True


async def test_two_workers_share_the_port_and_split_the_limits(procs, upstream):
    config = make_config([upstream.url], plans={"standard": plan(1e6, 1e7, max_concurrent=8)})
    proxy = procs.proxy(config, workers=2)
    # Many short connections so SO_REUSEPORT spreads them over both workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(60):
            async with session.get(proxy.url + SEARCH, headers=ACME) as r:
                assert r.status == 200
    metrics = proxy.metrics()
    served = {w: proxy.metric("sluicegate_requests_total", tenant="acme", worker=w) for w in ("0", "1")}
    assert sum(served.values()) == 60 and all(served.values()), served
    assert "sluicegate_bucket_level_cost_units" in metrics
    report = proxy.tenants()
    assert report["workers"] == 2
    assert report["tenants"]["acme"]["max_concurrent"] == 8  # 4 + 4: each worker holds half
    status, body = http_post(proxy.admin + "/reload")
    assert status == 200 and set(orjson.loads(body)["workers"]) == {"0", "1"}
    assert proxy.stop() == 0


async def test_access_log_has_one_json_line_per_request_with_every_field(procs, upstream):
    proxy = procs.proxy(make_config([upstream.url], access_log={"path": "-", "sample": 1.0}))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + SEARCH, data=b'{"query":{"wildcard":{"m":"*x"}}}', headers={
            **ACME, "Content-Type": "application/json"}) as r:
            assert r.status == 200
            assert r.headers["X-Sluicegate-Cost"].startswith("estimated=")
        async with session.get(proxy.url + SEARCH, headers={"Authorization": "ApiKey nope"}) as r:
            assert r.status == 401
            refusal_body = await r.read()
    proxy.stop()
    lines = proxy.access_log()
    assert len(lines) == 2
    admitted, refused = lines
    fields = {"time", "tenant", "method", "kind", "index", "resource", "fingerprint", "cost_estimated", "cost_charged",
              "cost_observed", "decision", "reason", "status", "node", "queue_ms", "upstream_ms", "bytes_in", "bytes_out"}
    assert fields <= set(admitted)
    assert admitted["tenant"] == "acme" and admitted["kind"] == "search" and admitted["index"] == "acme-logs"
    assert admitted["cost_observed"] == 3.0 and admitted["status"] == 200 and admitted["node"] == upstream.url
    assert admitted["bytes_in"] > 0 and admitted["bytes_out"] > 0
    assert refused["tenant"] == "-" and refused["status"] == 401 and refused["decision"] == "refused"
    assert refused["bytes_out"] == len(refusal_body) > 0  # a refusal's body counts too
    for line in lines:  # ISO 8601, UTC, milliseconds
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line["time"]
        stamp = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(stamp.timestamp() - time.time()) < 60


async def test_every_metric_on_the_dashboard_is_exported(procs, upstream):
    """config/grafana/sluicegate.json queries only names a running proxy (with Redis) exports."""
    import re
    from pathlib import Path

    dashboard = (Path(__file__).parents[2] / "config" / "grafana" / "sluicegate.json").read_text()
    wanted = set(re.findall(r"sluicegate_[a-z_]+", dashboard))
    assert len(wanted) >= 15
    server = procs.redis()
    proxy = procs.proxy(make_config([upstream.url], redis={"url": server.url}))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + SEARCH, data=b'{"query":{"match_all":{}}}', headers={
                **ACME, "Content-Type": "application/json"}) as r:
            assert r.status == 200
    text = proxy.metrics()
    families = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    samples = set(re.findall(r"^([a-z_]+)[{ ]", text, re.M))
    missing = {name for name in wanted if name not in samples and name not in families
               and re.sub(r"_(bucket|sum|count|total)$", "", name) not in families}
    assert not missing, f"the dashboard queries metrics /metrics does not export: {sorted(missing)}"


async def test_access_log_reopens_on_sighup_and_follows_a_new_path(procs, upstream, tmp_path):
    first, second = tmp_path / "access.log", tmp_path / "other.log"
    config = make_config([upstream.url], access_log={"path": str(first), "sample": 1.0})
    proxy = procs.proxy(config)

    def lines(path) -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    async def one_request(path, expect: int) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.url + SEARCH, headers=ACME) as r:
                assert r.status == 200
        await asyncio.to_thread(wait_until, lambda: lines(path) == expect, 10, f"{expect} line(s) in {path.name}")

    await one_request(first, 1)
    # logrotate: move the file, then SIGHUP; the proxy writes to a new file of the old name.
    first.rename(tmp_path / "access.log.1")
    proxy.signal(signal.SIGHUP)
    await asyncio.to_thread(wait_until, lambda: generation(proxy) == 2, 10, "reload")
    await one_request(first, 1)
    assert lines(tmp_path / "access.log.1") == 1
    # An invalid file still reopens the log (logrotate does not know about the config).
    first.rename(tmp_path / "access.log.2")
    broken = copy.deepcopy(config)
    broken["plans"]["standard"]["search"]["rate"] = -1
    proxy.write_config(broken)
    proxy.signal(signal.SIGHUP)
    await asyncio.to_thread(wait_until, lambda: proxy.metric("sluicegate_config_reload_failures_total") == 1, 10,
                            "failed reload")
    await one_request(first, 1)
    # A new access_log.path takes effect on reload.
    moved = copy.deepcopy(config)
    moved["access_log"]["path"] = str(second)
    proxy.write_config(moved)
    status, body = http_post(proxy.admin + "/reload")
    assert status == 200 and "restart" not in orjson.loads(body)["message"]
    await one_request(second, 1)
    assert lines(first) == 1
    # A path that cannot be opened keeps the log where it is, and the reload says so.
    nowhere = copy.deepcopy(config)
    nowhere["access_log"]["path"] = str(tmp_path / "missing-dir" / "access.log")
    proxy.write_config(nowhere)
    status, body = http_post(proxy.admin + "/reload")
    assert status == 200 and f"so the access log still goes to {second}" in orjson.loads(body)["message"]
    await one_request(second, 2)


async def test_tenants_counts_every_429_as_throttled_whatever_the_reason(procs, upstream):
    # One slot and no queue (concurrency 429s), and a bucket of two requests (budget 429s). A search's
    # estimate is set small beside the bucket, so that the concurrency refusals pass the budget first.
    config = make_config([upstream.url], plans={"standard": plan(0.001, 6, max_concurrent=1, max_queue=0)},
                         cost={"weights": {"search": 1.0}})
    proxy = procs.proxy(config)
    statuses: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as session:
        async def one(path: str) -> None:
            async with session.post(proxy.url + path, data=b'{"query":{"match_all":{}}}', headers={
                    **ACME, "Content-Type": "application/json"}) as r:
                await r.read()
                statuses.append((r.status, r.headers.get("X-Sluicegate-Reason", "")))

        slow = asyncio.create_task(one(SEARCH + "?delay_ms=500"))  # holds the only slot
        await asyncio.to_thread(wait_until, lambda: proxy.tenants()["tenants"]["acme"]["in_flight"] == 1, 10,
                                "the slot taken")
        await asyncio.gather(*(one(SEARCH) for _ in range(3)))  # concurrency
        await slow
        for _ in range(6):
            await one(SEARCH)  # the bucket runs dry: budget
    reasons = [reason for status, reason in statuses if status == 429]
    assert "concurrency" in reasons and "budget" in reasons, statuses
    acme = proxy.tenants()["tenants"]["acme"]
    assert acme["throttled"] == len(reasons)
    assert acme["throttled_by_reason"] == {why: reasons.count(why) for why in set(reasons)}
