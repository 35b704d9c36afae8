"""The operator cockpit end to end: the costliest shapes during a storm, merged across instances and
workers, and the status page in real headless Chromium (Debian's, driven by playwright-core).

Real processes only: the simulated cluster, the proxy (one worker, or a supervisor and two), redis-server.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.processes import http_get, make_config, tenant, wait_until

REPO = Path(__file__).resolve().parents[2]
BROWSER = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

ACME = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}
GLOBEX = {"Authorization": "ApiKey globex-key", "Content-Type": "application/json"}
#: the storm: a leading wildcard with a terms aggregation (~100 ms of a search thread on 200k documents)
STORM = {"query": {"wildcard": {"message": "*rror"}}, "aggs": {"by_user": {"terms": {"field": "user", "size": 500}}}}
#: the storm's redacted example, as the cockpit must show it
STORM_EXAMPLE = ('POST /acme-logs/_search {"query":{"wildcard":{"message":"*?"}},'
                 '"aggs":{"by_user":{"terms":{"field":"user","size":500}}}}')
#: a second, cheaper shape of the storming tenant, with a field name that is markup
ODD = {"query": {"term": {"<img src=x onerror=alert(1)>": "secret-value"}}}
QUIET = {"query": {"term": {"level": "info"}}}


def plans() -> dict:
    # Enough budget for part of the storm: the rest is throttled (429 budget), so throttles show too.
    bucket = {"rate": 400, "burst": 1200}
    return {"standard": {"search": bucket, "read": bucket, "write": bucket, "admin": bucket,
                         "max_concurrent": 8, "max_queue": 16, "max_wait_ms": 100}}


async def make_indices(cluster) -> None:
    async with aiohttp.ClientSession() as session:
        for name in ("acme-logs", "globex-logs", "initech-logs"):
            async with session.put(f"{cluster.url}/{name}", json={}) as r:
                assert r.status == 200, await r.text()
            doc = {"message": "error: upstream timeout", "user": "bob", "level": "info"}
            async with session.post(f"{cluster.url}/{name}/_doc?refresh=true", json=doc) as r:
                assert r.status == 201, await r.text()


async def send(session: aiohttp.ClientSession, url: str, headers: dict, body: dict) -> int:
    try:
        async with session.post(url, json=body, headers=headers) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError:
        return 0


async def storm(proxy_url: str, stop: asyncio.Event, statuses: dict, concurrency: int = 8,
                quiet_first_s: float = 0.0) -> None:
    """acme storms its expensive shape (and now and then the odd one) until `stop`; globex sends a cheap
    search every 300 ms from the start, acme only after `quiet_first_s`. `statuses` counts (tenant, status)."""
    async def stormer(session: aiohttp.ClientSession, k: int) -> None:
        await asyncio.sleep(quiet_first_s)
        n = 0
        while not stop.is_set():
            body = ODD if (n + k) % 10 == 0 else STORM
            status = await send(session, proxy_url + "/acme-logs/_search", ACME, body)
            statuses[("acme", status)] = statuses.get(("acme", status), 0) + 1
            n += 1
            if status != 200:
                await asyncio.sleep(0.05)  # a client that backs off a little on 429

    async def quiet(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            status = await send(session, proxy_url + "/globex-logs/_search", GLOBEX, QUIET)
            statuses[("globex", status)] = statuses.get(("globex", status), 0) + 1
            try:
                await asyncio.wait_for(stop.wait(), 0.3)
            except TimeoutError:
                pass

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(stormer(session, k) for k in range(concurrency)), quiet(session))


def cockpit_config(cluster, **overrides) -> dict:
    tenants = {"acme": tenant("acme"), "globex": tenant("globex"), "initech": tenant("initech")}
    return make_config(cluster.nodes, tenants=tenants, plans=plans(), **overrides)


def shapes(admin: str, name: str) -> dict:
    status, body = http_get(f"{admin}/tenants/{name}/shapes")
    assert status == 200, body
    return json.loads(body)


# ---- /tenants/{name}/shapes ----

async def test_during_a_storm_the_storming_shape_comes_first_with_a_redacted_example(procs):
    cluster = procs.simcluster(3, virtual_docs=200_000)
    await make_indices(cluster)
    proxy = procs.proxy(cockpit_config(cluster))
    stop, statuses = asyncio.Event(), {}
    load = asyncio.create_task(storm(proxy.url, stop, statuses))
    try:
        report = await asyncio.to_thread(
            wait_until, lambda: (r := shapes(proxy.admin, "acme"))["shapes"] and r["shapes"][0]["throttled"] >= 10 and r,
            30, "a storm partly throttled")
    finally:
        stop.set()
        await load
    print(json.dumps(report, indent=2))  # the report's "Must show": kept in the test output (-s)
    top = report["shapes"][0]
    assert top["endpoint"] == "search" and top["example"] == STORM_EXAMPLE
    assert top["cost_observed_total"] > 0 and top["cost_observed_mean"] > 0 and top["cost_estimated_mean"] > 0
    assert top["cost_learned"] is not None
    odd = next(s for s in report["shapes"] if "onerror" in s["example"])
    assert "secret-value" not in odd["example"] and odd["cost_observed_total"] < top["cost_observed_total"]
    assert report["scope"] == "local" and report["window_s"] == 300
    # Throttles of the shape are counted, and /tenants now counts budget 429s too.
    tenants = proxy.tenants()["tenants"]
    refused = statuses.get(("acme", 429), 0)
    assert refused > 0, statuses
    assert sum(s["throttled"] for s in shapes(proxy.admin, "acme")["shapes"]) + \
        shapes(proxy.admin, "acme")["other"]["throttled"] == refused
    assert tenants["acme"]["throttled"] == refused
    assert tenants["acme"]["throttled_by_reason"].get("budget", 0) > 0
    assert statuses.get(("globex", 200), 0) > 0 and not any(k[0] == "globex" and k[1] != 200 for k in statuses)
    assert shapes(proxy.admin, "globex")["shapes"][0]["example"] == (
        'POST /globex-logs/_search {"query":{"term":{"level":?}}}')
    assert shapes(proxy.admin, "initech")["shapes"] == []


async def test_shapes_ask_for_a_known_tenant_and_a_sane_limit(procs, shared_cluster):
    proxy = procs.proxy(make_config(shared_cluster.nodes))
    status, body = http_get(proxy.admin + "/tenants/nobody/shapes")
    assert status == 404 and json.loads(body)["error"]["type"] == "resource_not_found_exception"
    for bad in ("0", "-1", "abc", "1001"):
        status, body = http_get(proxy.admin + f"/tenants/acme/shapes?limit={bad}")
        assert status == 400 and b"limit must be" in body
    assert http_get(proxy.admin + "/tenants/acme/shapes?limit=3")[0] == 200
    for bad in ("abc", "nan", "inf"):
        status, body = http_get(proxy.admin + f"/status?since={bad}")
        assert status == 400 and b"since must be" in body


async def test_instances_sharing_redis_merge_their_shapes(procs):
    cluster = procs.simcluster(3, virtual_docs=200_000)
    await make_indices(cluster)
    store = procs.redis()
    config = cockpit_config(cluster, redis={"url": store.url}, shapes={"publish_interval_s": 0.2})
    first = procs.proxy(config)
    second = procs.proxy({**config, "listen": f"127.0.0.1:{_port()}", "admin_listen": f"127.0.0.1:{_port()}"})
    async with aiohttp.ClientSession() as session:
        for _ in range(6):
            assert await send(session, first.url + "/acme-logs/_search", ACME, STORM) == 200
        for _ in range(4):
            assert await send(session, second.url + "/acme-logs/_search", ACME, STORM) == 200
            assert await send(session, second.url + "/acme-logs/_search", ACME, QUIET) == 200

    def merged(admin: str):
        report = shapes(admin, "acme")
        counts = {s["example"]: s["requests"] for s in report["shapes"]}
        return report if counts.get(STORM_EXAMPLE) == 10 else None

    for admin in (first.admin, second.admin):  # each sees both instances' requests, counted once
        report = await asyncio.to_thread(wait_until, lambda admin=admin: merged(admin), 15, "merged shapes")
        assert report["scope"] == "shared"
        assert [s["requests"] for s in report["shapes"]] == [10, 4]
        assert report["shapes"][0]["example"] == STORM_EXAMPLE
    # Redis gone: each instance still answers with its own shapes, and says so.
    store.kill()
    report = await asyncio.to_thread(wait_until, lambda: (r := shapes(first.admin, "acme"))["scope"] == "local" and r,
                                     15, "local shapes")
    assert report["shapes"][0]["requests"] == 6


def _port() -> int:
    from tests.processes import free_port

    return free_port()


async def test_workers_add_up_their_shapes_and_status(procs):
    cluster = procs.simcluster(3, virtual_docs=200_000)
    await make_indices(cluster)
    proxy = procs.proxy(cockpit_config(cluster), workers=2)
    sent = 40
    for _ in range(sent):  # a new connection each: SO_REUSEPORT spreads them over the workers
        async with aiohttp.ClientSession() as session:
            assert await send(session, proxy.url + "/globex-logs/_search", GLOBEX, QUIET) == 200
    report = shapes(proxy.admin, "globex")
    assert report["workers"] == 2 and report["shapes"][0]["requests"] == sent
    status = await asyncio.to_thread(
        wait_until, lambda: (s := json.loads(http_get(proxy.admin + "/status")[1]))["history"]["t"] and s, 10, "samples")
    assert status["workers"] == 2 and status["tenants"]["globex"]["admitted"] == sent
    assert len(status["upstream"]) == 3 and status["config"]["generation"] == 1


async def test_the_page_and_its_data_are_only_on_the_admin_listener(procs, shared_cluster):
    proxy = procs.proxy(make_config(shared_cluster.nodes))
    status, body = http_get(proxy.admin + "/")
    assert status == 200 and b"<title>Sluicegate</title>" in body
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.admin + "/") as r:
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        for path in ("/cockpit/cockpit.js", "/cockpit/cockpit.css"):
            async with session.get(proxy.admin + path) as r:
                assert r.status == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
        # The proxy port is the cluster's API: no page, no status, no shapes there.
        for path in ("/", "/status", "/tenants/acme/shapes", "/cockpit/cockpit.js"):
            async with session.get(proxy.url + path) as r:
                assert r.status == 401, path
            async with session.get(proxy.url + path, headers={"Authorization": "ApiKey acme-key"}) as r:
                text = await r.text()
                assert "Sluicegate" not in text and "window_s" not in text, path
    # Nothing on the page names another origin.
    for name in ("index.html", "cockpit.js", "cockpit.css"):
        text = (REPO / "proxy" / "static" / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, name


# ---- the page in Chromium ----

def _browser_ready() -> None:
    missing = [what for what, ok in (
        (CHROMIUM, Path(CHROMIUM).exists()),
        ("node", shutil.which("node") is not None),
        ("tests/browser/node_modules/playwright-core", (BROWSER / "node_modules" / "playwright-core").is_dir()),
    ) if not ok]
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: `make test` installs them "
                    "(apt-get install chromium nodejs npm; npm ci --prefix tests/browser)")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
async def test_the_status_page_in_chromium_puts_the_storming_tenant_on_top_with_its_shape(procs, tmp_path, workers):
    _browser_ready()
    cluster = procs.simcluster(3, virtual_docs=200_000)
    await make_indices(cluster)
    proxy = procs.proxy(cockpit_config(cluster), workers=workers)
    # `make screenshot` keeps the picture in docs/, after a longer run so that the charts show a shape:
    # quiet traffic for 20 s, then the storm for 25 s before the page loads.
    keep = os.environ.get("COCKPIT_SCREENSHOT") if workers == 1 else None
    screenshot = Path(keep).resolve() if keep else tmp_path / "cockpit.png"
    stop, statuses = asyncio.Event(), {}
    load = asyncio.create_task(storm(proxy.url, stop, statuses, quiet_first_s=20.0 if keep else 0.0))
    try:
        if keep:
            await asyncio.sleep(45.0)
        await asyncio.to_thread(wait_until, lambda: shapes(proxy.admin, "acme")["shapes"], 20, "storm under way")
        browser = await asyncio.create_subprocess_exec(
            "node", str(BROWSER / "cockpit.mjs"), proxy.admin, str(screenshot), "acme",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=BROWSER, env={**os.environ, "CHROMIUM": CHROMIUM},
        )
        out, err = await asyncio.wait_for(browser.communicate(), 120)
    finally:
        stop.set()
        await load
    assert browser.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    print(json.dumps(report, indent=2))
    assert report["stage"] == "done", report
    assert report["order"][0] == "acme" and set(report["order"]) == {"acme", "globex", "initech"}
    number, endpoint, example, requests, *_ = report["shape"]["cells"]
    assert (number, endpoint, example) == ("1", "search", STORM_EXAMPLE)
    assert int(requests.replace(",", "")) > 0
    assert report["shapes_heading"].startswith("Costliest shapes of acme")
    assert report["markup_in_examples"] == 0 and report["dialogs"] == 0  # a field name's markup stays text
    assert any(chip.startswith("budget ") for chip in report["throttle_chips"]), report["throttle_chips"]
    assert report["chart_lines"] >= 2 and report["live"] == "live"
    assert report["foreign"] == [] and report["errors"] == [] and report["console"] == []
    assert screenshot.stat().st_size > 10_000
    assert f"{workers} worker(s)" in report["footer"]
