"""One official Python client's drop-in scenario, as a JSON transcript on stdout.

    python tests/clients/scenario.py --client elasticsearch|opensearch --index NAME
                                     [--api-key KEY] [--compatible-with 8] URL [URL ...]

Run once straight at a real cluster and once through Sluicegate (tests/real/test_dropin_matrix.py
compares the two transcripts). Which elasticsearch-py runs is whichever `import elasticsearch`
finds: the venv's 9.x, or 8.x when `PYTHONPATH=.venv/es8` shadows it.

Every step records what the client saw: the status, the response headers (lower-cased; the test
decides which may differ) and the body the client decoded, whether the call succeeded or raised.
Steps are written the way an application writes them with that client (its API methods and its
helpers), not as raw HTTP. The index is created with 3 shards and no replica so that every
`_shards` count and `_seq_no` is the same on two fresh indices; searches sort on `n`, so hit order
never depends on how each index's segments happened to merge.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

DOCS = 10_000
#: the gzip part's bulk, small: compression is about bytes on the wire, not volume
GZIP_DOCS = 2_000
MAPPINGS = {
    "properties": {
        "n": {"type": "integer"},
        "tag": {"type": "keyword"},
        "message": {"type": "text"},
        "ts": {"type": "date"},
    }
}
SETTINGS = {"number_of_shards": 3, "number_of_replicas": 0}


def document(i: int) -> dict:
    return {"n": i, "tag": f"t{i % 10}", "message": f"document number {i} of the drop-in matrix",
            "ts": f"2025-01-{1 + i % 28:02d}T00:00:00Z"}


class Transcript:
    """The steps in order: name → {status, headers, body} (or {error} when no response came)."""

    def __init__(self):
        self.steps: list[dict] = []

    def add(self, name: str, status: int | None, headers: dict | None, body: Any) -> Any:
        self.steps.append({"step": name, "status": status, "headers": headers, "body": body})
        return body

    def note(self, name: str, value: Any) -> Any:
        """A result the client computed itself (a helper's totals), not one HTTP response."""
        self.steps.append({"step": name, "value": value})
        return value


# ---- elasticsearch-py (8.x and 9.x) -----------------------------------------------------------

def elasticsearch_client(urls: list[str], api_key: str | None, compatible_with: str | None, compress: bool):
    import elasticsearch
    from elastic_transport import Urllib3HttpNode

    options: dict[str, Any] = {"request_timeout": 60, "http_compress": compress}
    if api_key:
        options["api_key"] = api_key
    if compatible_with:
        # elasticsearch-py sends `compatible-with=<its own major>` in Accept and Content-Type on every
        # call, and its API methods override client-level headers with their own, so the one place
        # to speak to an older cluster is the node: rewrite the media types the client chose.
        major = elasticsearch.__versionstr__.partition(".")[0]

        class OlderClusterNode(Urllib3HttpNode):
            def perform_request(self, method, target, body=None, headers=None, **kw):
                if headers is not None:
                    headers = headers.copy()
                    for name in ("accept", "content-type"):
                        if name in headers:
                            headers[name] = headers[name].replace(f"compatible-with={major}",
                                                                  f"compatible-with={compatible_with}")
                return super().perform_request(method, target, body=body, headers=headers, **kw)

        options["node_class"] = OlderClusterNode
    return elasticsearch.Elasticsearch(urls, **options)


def run_elasticsearch(urls: list[str], index: str, api_key: str | None, compatible_with: str | None) -> Transcript:
    import elasticsearch
    from elasticsearch import ApiError, helpers

    es = elasticsearch_client(urls, api_key, compatible_with, compress=False)
    t = Transcript()
    t.note("client", {"name": "elasticsearch-py", "version": elasticsearch.__versionstr__,
                      "major": elasticsearch.__versionstr__.partition(".")[0]})

    def call(name: str, fn: Callable[[], Any]) -> Any:
        try:
            r = fn()
        except ApiError as e:
            return t.add(name, e.meta.status, dict(e.meta.headers), e.body)
        body = None if r.meta.status and isinstance(r.body, bool) else r.body  # HEAD: the status says it
        return t.add(name, r.meta.status, dict(r.meta.headers), body)

    call("info", es.info)
    call("create index", lambda: es.indices.create(index=index, settings=SETTINGS, mappings=MAPPINGS))
    call("HEAD index", lambda: es.indices.exists(index=index))
    call("HEAD missing index", lambda: es.indices.exists(index=index + "-absent"))
    call("index doc", lambda: es.index(index=index, id="doc-1", document=document(1), refresh=True))
    call("get doc", lambda: es.get(index=index, id="doc-1"))
    call("update doc", lambda: es.update(index=index, id="doc-1", doc={"tag": "updated"}, refresh=True))
    call("get updated doc", lambda: es.get(index=index, id="doc-1"))
    call("delete doc", lambda: es.delete(index=index, id="doc-1", refresh=True))
    call("get deleted doc", lambda: es.get(index=index, id="doc-1"))

    bulk_requests = count_requests(es)
    ok, errors = helpers.bulk(es, ({"_index": index, "_id": str(i), **document(i)} for i in range(DOCS)))
    t.note("bulk helper", {"ok": ok, "errors": errors, "requests": bulk_requests.stop()})
    call("refresh", lambda: es.indices.refresh(index=index))

    call("count", lambda: es.count(index=index))
    call("count with query", lambda: es.count(index=index, query={"term": {"tag": "t3"}}))
    call("search", lambda: es.search(
        index=index, query={"bool": {"filter": [{"range": {"n": {"lt": 20}}}]}}, sort=[{"n": "asc"}], size=5,
        aggs={"tags": {"terms": {"field": "tag"}}, "n": {"stats": {"field": "n"}}},
    ))
    call("search missing index", lambda: es.search(index=index + "-absent", query={"match_all": {}}))
    call("mget", lambda: es.mget(index=index, ids=["2", "3", "no-such-doc"]))
    call("msearch", lambda: es.msearch(searches=[
        {"index": index}, {"query": {"term": {"tag": "t1"}}, "size": 2, "sort": [{"n": "asc"}]},
        {"index": index}, {"query": {"range": {"n": {"gte": 9990}}}, "size": 0},
        {"index": index + "-absent"}, {"query": {"match_all": {}}},
    ]))

    # Scroll to the end with the client's own calls, page by page, then clear it.
    page = call("scroll: first page", lambda: es.search(index=index, scroll="1m", size=1000, sort=["n"]))
    pages = 0
    while isinstance(page, dict) and page.get("hits", {}).get("hits"):
        scroll_id = page["_scroll_id"]
        pages += 1
        page = call(f"scroll: page {pages}", lambda: es.scroll(scroll_id=scroll_id, scroll="1m"))
    if isinstance(page, dict) and "_scroll_id" in page:
        call("clear scroll", lambda: es.clear_scroll(scroll_id=page["_scroll_id"]))
    scanned = [hit["_source"]["n"] for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}}, size=1000)]
    t.note("scan helper", {"docs": len(scanned), "sum": sum(scanned)})

    # A point in time, paged with search_after, then closed.
    pit = call("open point in time", lambda: es.open_point_in_time(index=index, keep_alive="1m"))
    if isinstance(pit, dict) and "id" in pit:
        pit_id, after, n = pit["id"], None, 0
        while True:
            extra = {"search_after": after} if after else {}
            page = call(f"pit: page {n}", lambda: es.search(
                pit={"id": pit_id, "keep_alive": "1m"}, size=2500, sort=[{"n": "asc"}], **extra))
            hits = page.get("hits", {}).get("hits") if isinstance(page, dict) else None
            if not hits:
                break
            pit_id, after, n = page.get("pit_id", pit_id), hits[-1]["sort"], n + 1
        call("close point in time", lambda: es.close_point_in_time(id=pit_id))

    call("async search", lambda: es.async_search.submit(
        index=index, query={"range": {"n": {"lt": 100}}}, size=1, sort=[{"n": "asc"}], wait_for_completion_timeout="5s"))
    call("delete by query", lambda: es.delete_by_query(index=index, query={"range": {"n": {"gte": 9000}}}, refresh=True))
    call("count after delete by query", lambda: es.count(index=index))

    task = call("force merge, as a task", lambda: es.indices.forcemerge(index=index, wait_for_completion=False))
    if isinstance(task, dict) and "task" in task:
        call("get task", lambda: es.tasks.get(task_id=task["task"], wait_for_completion=True))
    call("list tasks", lambda: es.tasks.list(actions="*byquery", detailed=True))
    call("cat indices json", lambda: es.cat.indices(index=index, format="json"))
    call("cat indices text", lambda: es.cat.indices(index=index, v=True, h="health,status,index,pri,rep,docs.count"))
    call("cluster health of the index", lambda: es.cluster.health(index=index, wait_for_status="green"))
    call("cluster health", lambda: es.cluster.health())

    # The same client with compression on: gzip request bodies, gzip responses.
    gz = elasticsearch_client(urls, api_key, compatible_with, compress=True)
    gz_index = index + "-gz"

    def gcall(name: str, fn: Callable[[], Any]) -> Any:
        return call("gzip: " + name, fn)

    gcall("create index", lambda: gz.indices.create(index=gz_index, settings=SETTINGS, mappings=MAPPINGS))
    gcall("index doc", lambda: gz.index(index=gz_index, id="doc-1", document=document(1), refresh=True))
    gcall("get doc", lambda: gz.get(index=gz_index, id="doc-1"))
    ok, errors = helpers.bulk(gz, ({"_index": gz_index, "_id": str(i), **document(i)} for i in range(GZIP_DOCS)),
                              refresh=True)
    t.note("gzip: bulk helper", {"ok": ok, "errors": errors})
    gcall("search, a large response", lambda: gz.search(index=gz_index, size=GZIP_DOCS, sort=[{"n": "asc"}]))
    gcall("msearch", lambda: gz.msearch(searches=[{"index": gz_index}, {"size": 1, "sort": [{"n": "desc"}]}]))
    page = gcall("scroll: first page", lambda: gz.search(index=gz_index, scroll="1m", size=500, sort=["n"]))
    if isinstance(page, dict) and "_scroll_id" in page:
        scroll_id = page["_scroll_id"]
        gcall("scroll: next page", lambda: gz.scroll(scroll_id=scroll_id, scroll="1m"))
        gcall("clear scroll", lambda: gz.clear_scroll(scroll_id=scroll_id))
    gcall("delete index", lambda: gz.indices.delete(index=gz_index))

    call("delete index", lambda: es.indices.delete(index=index))
    return t


class count_requests:
    """Counts the HTTP requests a helper made, by status, through the client's node pool."""

    def __init__(self, client):
        self.statuses: dict[str, int] = {}
        self.nodes = list(client.transport.node_pool.all())
        for node in self.nodes:
            original = node.perform_request

            def counted(*a, _original=original, **kw):
                response = _original(*a, **kw)
                key = str(response.meta.status)
                self.statuses[key] = self.statuses.get(key, 0) + 1
                return response

            node.perform_request = counted

    def stop(self) -> dict[str, int]:
        for node in self.nodes:
            del node.perform_request
        return self.statuses


# ---- opensearch-py ------------------------------------------------------------------------------

def opensearch_client(urls: list[str], api_key: str | None, compress: bool, seen: list):
    from opensearchpy import OpenSearch, Urllib3HttpConnection

    class RecordingConnection(Urllib3HttpConnection):
        """opensearch-py hands back only bodies: keep each response's status and headers for the transcript."""

        def _create_urllib3_pool(self):
            super()._create_urllib3_pool()
            urlopen = self.pool.urlopen

            def recorded(*a, **kw):
                response = urlopen(*a, **kw)
                seen.append((response.status, {k.lower(): v for k, v in response.headers.items()}))
                return response

            self.pool.urlopen = recorded

    headers = {"Authorization": f"ApiKey {api_key}"} if api_key else {}
    return OpenSearch(urls, headers=headers, timeout=60, http_compress=compress, connection_class=RecordingConnection)


def run_opensearch(urls: list[str], index: str, api_key: str | None) -> Transcript:
    import opensearchpy
    from opensearchpy import TransportError, helpers

    seen: list[tuple[int, dict]] = []
    client = opensearch_client(urls, api_key, compress=False, seen=seen)
    t = Transcript()
    t.note("client", {"name": "opensearch-py", "version": opensearchpy.__versionstr__,
                      "major": opensearchpy.__versionstr__.partition(".")[0]})

    def call(name: str, fn: Callable[[], Any]) -> Any:
        before = len(seen)
        try:
            body = fn()
        except TransportError as e:
            body = e.info
        status, headers = seen[-1] if len(seen) > before else (None, None)
        return t.add(name, status, headers, None if isinstance(body, bool) else body)

    call("info", client.info)
    call("create index", lambda: client.indices.create(index=index, body={"settings": SETTINGS, "mappings": MAPPINGS}))
    call("HEAD index", lambda: client.indices.exists(index=index))
    call("HEAD missing index", lambda: client.indices.exists(index=index + "-absent"))
    call("index doc", lambda: client.index(index=index, id="doc-1", body=document(1), refresh=True))
    call("get doc", lambda: client.get(index=index, id="doc-1"))
    call("update doc", lambda: client.update(index=index, id="doc-1", body={"doc": {"tag": "updated"}}, refresh=True))
    call("get updated doc", lambda: client.get(index=index, id="doc-1"))
    call("delete doc", lambda: client.delete(index=index, id="doc-1", refresh=True))
    call("get deleted doc", lambda: client.get(index=index, id="doc-1"))

    before = len(seen)
    ok, errors = helpers.bulk(client, ({"_index": index, "_id": str(i), **document(i)} for i in range(DOCS)))
    statuses: dict[str, int] = {}
    for status, _ in seen[before:]:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    t.note("bulk helper", {"ok": ok, "errors": errors, "requests": statuses})
    call("refresh", lambda: client.indices.refresh(index=index))

    call("count", lambda: client.count(index=index))
    call("count with query", lambda: client.count(index=index, body={"query": {"term": {"tag": "t3"}}}))
    call("search", lambda: client.search(index=index, body={
        "query": {"bool": {"filter": [{"range": {"n": {"lt": 20}}}]}}, "sort": [{"n": "asc"}], "size": 5,
        "aggs": {"tags": {"terms": {"field": "tag"}}, "n": {"stats": {"field": "n"}}},
    }))
    call("search missing index", lambda: client.search(index=index + "-absent", body={"query": {"match_all": {}}}))
    call("mget", lambda: client.mget(index=index, body={"ids": ["2", "3", "no-such-doc"]}))
    call("msearch", lambda: client.msearch(body=[
        {"index": index}, {"query": {"term": {"tag": "t1"}}, "size": 2, "sort": [{"n": "asc"}]},
        {"index": index}, {"query": {"range": {"n": {"gte": 9990}}}, "size": 0},
        {"index": index + "-absent"}, {"query": {"match_all": {}}},
    ]))

    page = call("scroll: first page", lambda: client.search(index=index, scroll="1m", size=1000, body={"sort": ["n"]}))
    pages = 0
    while isinstance(page, dict) and page.get("hits", {}).get("hits"):
        scroll_id = page["_scroll_id"]
        pages += 1
        page = call(f"scroll: page {pages}", lambda: client.scroll(body={"scroll_id": scroll_id, "scroll": "1m"}))
    if isinstance(page, dict) and "_scroll_id" in page:
        call("clear scroll", lambda: client.clear_scroll(body={"scroll_id": page["_scroll_id"]}))
    scanned = [hit["_source"]["n"] for hit in helpers.scan(client, index=index, query={"query": {"match_all": {}}}, size=1000)]
    t.note("scan helper", {"docs": len(scanned), "sum": sum(scanned)})

    pit = call("open point in time", lambda: client.create_pit(index=index, params={"keep_alive": "1m"}))
    if isinstance(pit, dict) and "pit_id" in pit:
        pit_id, after, n = pit["pit_id"], None, 0
        while True:
            body = {"pit": {"id": pit_id, "keep_alive": "1m"}, "size": 2500, "sort": [{"n": "asc"}]}
            if after:
                body["search_after"] = after
            page = call(f"pit: page {n}", lambda: client.search(body=body))
            hits = page.get("hits", {}).get("hits") if isinstance(page, dict) else None
            if not hits:
                break
            pit_id, after, n = page.get("pit_id", pit_id), hits[-1]["sort"], n + 1
        call("close point in time", lambda: client.delete_pit(body={"pit_id": [pit_id]}))

    call("delete by query", lambda: client.delete_by_query(
        index=index, body={"query": {"range": {"n": {"gte": 9000}}}}, refresh=True))
    call("count after delete by query", lambda: client.count(index=index))

    task = call("force merge, as a task", lambda: client.indices.forcemerge(index=index, params={"wait_for_completion": "false"}))
    if isinstance(task, dict) and "task" in task:
        call("get task", lambda: client.tasks.get(task_id=task["task"], wait_for_completion=True))
    call("list tasks", lambda: client.tasks.list(actions="*byquery", detailed=True))
    call("cat indices json", lambda: client.cat.indices(index=index, format="json"))
    call("cat indices text", lambda: client.cat.indices(index=index, v=True, h="health,status,index,pri,rep,docs.count"))
    call("cluster health of the index", lambda: client.cluster.health(index=index, wait_for_status="green"))
    call("cluster health", lambda: client.cluster.health())

    gz = opensearch_client(urls, api_key, compress=True, seen=seen)
    gz_index = index + "-gz"

    def gcall(name: str, fn: Callable[[], Any]) -> Any:
        return call("gzip: " + name, fn)

    gcall("create index", lambda: gz.indices.create(index=gz_index, body={"settings": SETTINGS, "mappings": MAPPINGS}))
    gcall("index doc", lambda: gz.index(index=gz_index, id="doc-1", body=document(1), refresh=True))
    gcall("get doc", lambda: gz.get(index=gz_index, id="doc-1"))
    ok, errors = helpers.bulk(gz, ({"_index": gz_index, "_id": str(i), **document(i)} for i in range(GZIP_DOCS)),
                              refresh=True)
    t.note("gzip: bulk helper", {"ok": ok, "errors": errors})
    gcall("search, a large response", lambda: gz.search(index=gz_index, body={"size": GZIP_DOCS, "sort": [{"n": "asc"}]}))
    gcall("msearch", lambda: gz.msearch(body=[{"index": gz_index}, {"size": 1, "sort": [{"n": "desc"}]}]))
    page = gcall("scroll: first page", lambda: gz.search(index=gz_index, scroll="1m", size=500, body={"sort": ["n"]}))
    if isinstance(page, dict) and "_scroll_id" in page:
        scroll_id = page["_scroll_id"]
        gcall("scroll: next page", lambda: gz.scroll(body={"scroll_id": scroll_id, "scroll": "1m"}))
        gcall("clear scroll", lambda: gz.clear_scroll(body={"scroll_id": scroll_id}))
    gcall("delete index", lambda: gz.indices.delete(index=gz_index))

    call("delete index", lambda: client.indices.delete(index=index))
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=["elasticsearch", "opensearch"], required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--compatible-with", help="the cluster's major version, when older than elasticsearch-py's")
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")  # deprecation warnings are in the transcript's headers already
    if args.client == "elasticsearch":
        transcript = run_elasticsearch(args.urls, args.index, args.api_key, args.compatible_with)
    else:
        transcript = run_opensearch(args.urls, args.index, args.api_key)
    json.dump(transcript.steps, sys.stdout, default=repr)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
