"""Scroll, point-in-time and async-search ids bound to their tenant (proxy/idbinding.py)."""
from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest

from proxy import esapi
from proxy.config import HardLimits, hash_secret, parse_config
from proxy.errors import BadRequest, Forbidden
from proxy.idbinding import HEAD_LIMIT, OVERHEAD, IdBinder, binding_key

SCROLL_ID = "FGluY2x1ZGVfY29udGV4dF91dWlkDXF1ZXJ5QW5kRmV0Y2gBFkVWM0dFNnNuUUNtT0JvN3VHMTdLcncAAAAAAAAAKBZhMV9tb0ZQbw=="
PIT_ID = "46ToAwMDaWR5BXV1aWQyKwZub2RlXzMAAAAAAAAAACoBYwADaWR4BXV1aWQxAgZub2RlXzEAAAAAAAAAAAEBYQADaWR5BXV1aWQyKgZub2RlXzI="
LIMITS = HardLimits()


def config(**security):
    return parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "plans": {"p": {}},
        "security": security,
        "tenants": {
            "acme": {"plan": "p", "api_keys": [hash_secret("acme-key")], "indices": ["acme-*"]},
            "globex": {"plan": "p", "api_keys": [hash_secret("globex-key")], "indices": ["globex-*"]},
        },
    })


@pytest.fixture
def binder() -> IdBinder:
    return IdBinder(binding_key(config()))


def call_and_body(method: str, target: str, body=None, encoding=None):
    call = esapi.parse_call(method, target)
    raw = orjson.dumps(body) if body is not None else b""
    if encoding == "gzip":
        raw = gzip.compress(raw)
    return call, esapi.decode_body(call, raw, "application/json", encoding, LIMITS)


# ---- the wrapper ----------------------------------------------------------------------------


def test_wrap_then_unwrap_gives_the_original_back(binder):
    wrapped = binder.wrap("acme", SCROLL_ID)
    assert wrapped.startswith("sg1.") and wrapped.endswith("." + SCROLL_ID)
    assert len(wrapped) == len(SCROLL_ID) + OVERHEAD
    assert binder.unwrap("acme", wrapped, "scroll") == SCROLL_ID


@pytest.mark.parametrize("presented", [
    SCROLL_ID,  # the cluster's own id, unwrapped
    "sg1.0000000000000000." + SCROLL_ID,  # a forged tag
    "sg1.", "sg1.abc", "", None, 5, ["x"], {"id": "x"},
    "sg2." + "0" * 16 + "." + SCROLL_ID,
])
def test_anything_not_issued_to_the_tenant_is_403(binder, presented):
    with pytest.raises(Forbidden) as info:
        binder.unwrap("acme", presented, "scroll")
    assert info.value.status == 403


def test_another_tenants_id_is_403_naming_neither_the_owner_nor_the_id(binder):
    wrapped = binder.wrap("acme", SCROLL_ID)
    with pytest.raises(Forbidden) as info:
        binder.unwrap("globex", wrapped, "scroll")
    assert "acme" not in info.value.reason and SCROLL_ID not in info.value.reason and wrapped not in info.value.reason


def test_a_tampered_original_fails_its_tag(binder):
    wrapped = binder.wrap("acme", SCROLL_ID)
    with pytest.raises(Forbidden):
        binder.unwrap("acme", wrapped[:-2] + "xx", "scroll")


def test_the_tag_binds_tenant_and_id_together(binder):
    # "acme" + "\0" + id can never be read as another tenant name + another id
    assert binder.wrap("acme", "a" + SCROLL_ID) != binder.wrap("acmea", SCROLL_ID)


def test_instances_with_the_same_config_agree_and_a_secret_changes_everything():
    assert binding_key(config()) == binding_key(config())
    a = IdBinder(binding_key(config(binding_secret="s" * 32)))
    b = IdBinder(binding_key(config(binding_secret="t" * 32)))
    assert a.wrap("acme", PIT_ID) != b.wrap("acme", PIT_ID)
    assert binding_key(config(binding_secret="s" * 32)) != binding_key(config())


def test_the_derived_key_changes_with_any_tenant_key():
    other = config().model_copy(deep=True)
    cfg = parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9200"]}, "plans": {"p": {}},
        "tenants": {"acme": {"plan": "p", "api_keys": [hash_secret("rotated")], "indices": ["acme-*"]},
                    "globex": {"plan": "p", "api_keys": [hash_secret("globex-key")], "indices": ["globex-*"]}},
    })
    assert binding_key(cfg) != binding_key(other)


# ---- response heads ---------------------------------------------------------------------------


@pytest.mark.parametrize("head,field", [
    (b'{"_scroll_id":"%s","took":3,"timed_out":false}', b"_scroll_id"),
    (b'{\n  "_scroll_id" : "%s",\n  "took" : 3\n}', b"_scroll_id"),
    (b'{"pit_id":"%s","took":1}', b"pit_id"),
    (b'{"id":"%s","_shards":{"total":1}}', b"id"),
])
def test_the_first_key_of_a_response_is_wrapped(binder, head, field):
    data = head % SCROLL_ID.encode()
    out = binder.wrap_head("acme", data, (field,))
    assert out is not None and len(out) == len(data) + OVERHEAD
    doc = orjson.loads(out)
    assert binder.unwrap("acme", doc[field.decode()], "scroll") == SCROLL_ID


@pytest.mark.parametrize("data", [
    b'{"took":3,"_scroll_id":"abc"}', b'{"hits":{}}', b"", b"[1]", b'{"_scroll_id":"a\\u0062c"}', b'{"_scroll_id":""}',
    b'{"id":"abc"}',  # not the field this call expects
])
def test_a_head_without_the_expected_id_first_is_left_alone(binder, data):
    assert binder.wrap_head("acme", data, (b"_scroll_id",)) is None


def _chunks(data: bytes, size: int):
    async def gen():
        for i in range(0, len(data), size):
            yield data[i:i + size]
    return gen()


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_a_streamed_head_is_read_until_the_id_is_whole(binder, size):
    call, body = call_and_body("POST", "/_search/scroll", {"scroll_id": binder.wrap("acme", SCROLL_ID)})
    rebound = binder.rebind("acme", call, body, "/_search/scroll")
    data = b'{"_scroll_id":"' + SCROLL_ID.encode() + b'","took":3,"hits":{"hits":[' + b"0," * 5000 + b"1]}}"

    async def relay():
        chunks = _chunks(data, size)
        first, grew = await rebound.wrap_stream_head(chunks)
        return first + b"".join([c async for c in chunks]), grew

    out, grew = asyncio.run(relay())
    assert grew == OVERHEAD and len(out) == len(data) + grew
    assert binder.unwrap("acme", orjson.loads(out)["_scroll_id"], "scroll") == SCROLL_ID


def test_a_streamed_head_gives_up_after_the_limit(binder):
    call, body = call_and_body("POST", "/acme-a/_search?scroll=1m")
    rebound = binder.rebind("acme", call, body, "/acme-a/_search?scroll=1m")
    data = b'{"_scroll_id":"' + b"A" * (HEAD_LIMIT + 10) + b'"}'

    async def relay():
        chunks = _chunks(data, 65536)
        first, grew = await rebound.wrap_stream_head(chunks)
        return first + b"".join([c async for c in chunks]), grew

    out, grew = asyncio.run(relay())
    assert (out, grew) == (data, 0)


def test_only_identity_2xx_responses_are_wrapped(binder):
    call, body = call_and_body("POST", "/acme-a/_search?scroll=1m")
    rebound = binder.rebind("acme", call, body, "/acme-a/_search?scroll=1m")
    assert rebound.wraps(200, None) and rebound.wraps(201, "identity")
    assert not rebound.wraps(404, None) and not rebound.wraps(200, "gzip")


# ---- requests ---------------------------------------------------------------------------------


def test_calls_without_ids_are_not_rebound(binder):
    for method, target in [("POST", "/acme-a/_search"), ("GET", "/acme-a/_doc/1"), ("POST", "/_bulk")]:
        call, body = call_and_body(method, target)
        assert binder.rebind("acme", call, body, target) is None


def test_scroll_in_the_body_is_unwrapped_and_the_next_page_wrapped(binder):
    call, body = call_and_body("POST", "/_search/scroll", {"scroll": "1m", "scroll_id": binder.wrap("acme", SCROLL_ID)},
                               encoding="gzip")
    rebound = binder.rebind("acme", call, body, "/_search/scroll")
    target, sent = rebound.request(body.raw)
    assert target == "/_search/scroll"
    assert orjson.loads(sent) == {"scroll": "1m", "scroll_id": SCROLL_ID}
    # re-serialised plain; the response asked plain
    assert rebound.dropped_headers == {b"content-encoding", b"accept-encoding"}
    assert rebound.response_fields == (b"_scroll_id",)


def test_scroll_in_the_query_and_the_deprecated_path_form(binder):
    wrapped = binder.wrap("acme", SCROLL_ID)
    from urllib.parse import quote
    target = f"/_search/scroll?scroll=1m&scroll_id={quote(wrapped, safe='')}"
    call, body = call_and_body("GET", target)
    assert binder.rebind("acme", call, body, target).target == f"/_search/scroll?scroll=1m&scroll_id={quote(SCROLL_ID, safe='')}"
    target = f"/_search/scroll/{quote(wrapped, safe='')}?scroll=1m"
    call, body = call_and_body("GET", target)
    assert binder.rebind("acme", call, body, target).target == f"/_search/scroll/{quote(SCROLL_ID, safe='')}?scroll=1m"
    with pytest.raises(Forbidden):
        binder.rebind("globex", call, body, target)


@pytest.mark.parametrize("method,target,body", [
    ("POST", "/_search/scroll", {"scroll_id": SCROLL_ID}),
    ("GET", "/_search/scroll/" + SCROLL_ID.replace("=", "%3D"), None),
    ("GET", "/_search/scroll?scroll_id=" + SCROLL_ID.replace("=", "%3D"), None),
    ("DELETE", "/_search/scroll", {"scroll_id": [SCROLL_ID]}),
    ("DELETE", "/_search/scroll/_all", None),
    ("DELETE", "/_search/scroll", {"scroll_id": "_all"}),
    ("DELETE", "/_pit", {"id": PIT_ID}),
    ("DELETE", "/_search/point_in_time", {"pit_id": [PIT_ID]}),
    ("DELETE", "/_search/point_in_time/_all", None),
    ("POST", "/_search", {"pit": {"id": PIT_ID}}),
    ("POST", "/_async_search", {"pit": {"id": PIT_ID}}),
    ("GET", "/_async_search/FmRldE8zREVEUzA2ZVpUeGs2ejJFUFEaMkZ5QTVrSTZSaVN3WlNFVmtlWHJsdzoxMDc=", None),
    ("GET", "/_async_search/status/abc", None),
    ("DELETE", "/_async_search/abc", None),
])
def test_unwrapped_ids_and_all_are_403(binder, method, target, body):
    call, decoded = call_and_body(method, target, body)
    with pytest.raises(Forbidden):
        binder.rebind("acme", call, decoded, target)


def test_clear_scroll_lists_and_close_pit_in_both_dialects(binder):
    a, b = binder.wrap("acme", SCROLL_ID), binder.wrap("acme", SCROLL_ID[::-1])
    call, body = call_and_body("DELETE", "/_search/scroll", {"scroll_id": [a, b]})
    assert orjson.loads(binder.rebind("acme", call, body, "/_search/scroll").body) == {"scroll_id": [SCROLL_ID, SCROLL_ID[::-1]]}
    with pytest.raises(Forbidden):  # one foreign id in the list is enough
        call, body = call_and_body("DELETE", "/_search/scroll", {"scroll_id": [a, binder.wrap("globex", SCROLL_ID)]})
        binder.rebind("acme", call, body, "/_search/scroll")
    target = f"/_search/scroll/{a},{b}"
    call, body = call_and_body("DELETE", target)
    assert binder.rebind("acme", call, body, target).target.count(",") == 1
    pit = binder.wrap("acme", PIT_ID)
    call, body = call_and_body("DELETE", "/_pit", {"id": pit})
    assert orjson.loads(binder.rebind("acme", call, body, "/_pit").body) == {"id": PIT_ID}
    call, body = call_and_body("DELETE", "/_search/point_in_time", {"pit_id": [pit]})
    assert orjson.loads(binder.rebind("acme", call, body, "/_search/point_in_time").body) == {"pit_id": [PIT_ID]}


def test_closing_points_in_time_echoes_the_ids_the_tenant_presented(binder):
    # OpenSearch answers DELETE /_search/point_in_time with each id it closed: the client gets back what it sent.
    pits = [binder.wrap("acme", PIT_ID), binder.wrap("acme", PIT_ID[::-1])]
    call, body = call_and_body("DELETE", "/_search/point_in_time", {"pit_id": pits})
    rebound = binder.rebind("acme", call, body, "/_search/point_in_time")
    assert rebound.wraps(200, None) and not rebound.wraps(200, "gzip")
    answer = b'{\n  "pits" : [ {\n    "successful" : true,\n    "pit_id" : "%s"\n  }, {\n    "successful" : false,\n' \
             b'    "pit_id" : "%s"\n  } ]\n}' % (PIT_ID.encode(), PIT_ID[::-1].encode())
    wrapped = rebound.wrap_response(answer)
    assert [p["pit_id"] for p in orjson.loads(wrapped)["pits"]] == pits
    assert wrapped == answer.replace(PIT_ID.encode(), pits[0].encode()).replace(PIT_ID[::-1].encode(), pits[1].encode())
    # Elasticsearch's answer names no id; anything that is not the expected shape is relayed as it came.
    for other in (b'{"succeeded":true,"num_freed":3}', b'{"pits":"x"}', b'{"pits":[1,{"pit_id":7}]}', b"not json"):
        assert rebound.wrap_response(other) == other


def test_a_search_over_a_point_in_time_is_unwrapped_and_its_new_pit_id_wrapped(binder):
    body = {"size": 10, "pit": {"id": binder.wrap("acme", PIT_ID), "keep_alive": "1m"}, "sort": ["_shard_doc"]}
    call, decoded = call_and_body("POST", "/_search", body)
    rebound = binder.rebind("acme", call, decoded, "/_search")
    assert orjson.loads(rebound.body)["pit"] == {"id": PIT_ID, "keep_alive": "1m"}
    assert rebound.response_fields == (b"pit_id",)
    with pytest.raises(Forbidden):
        binder.rebind("globex", call, decoded, "/_search")


def test_calls_that_open_an_id_have_it_wrapped(binder):
    cases = {
        ("POST", "/acme-a/_pit?keep_alive=1m"): (b"id", b"pit_id"),
        ("POST", "/acme-a/_search/point_in_time?keep_alive=1m"): (b"id", b"pit_id"),
        ("POST", "/acme-a/_search?scroll=1m"): (b"_scroll_id",),
        ("POST", "/acme-a/_search/template?scroll=1m"): (b"_scroll_id",),
        ("POST", "/acme-a/_async_search"): (b"id",),
    }
    for (method, target), fields in cases.items():
        call, body = call_and_body(method, target)
        rebound = binder.rebind("acme", call, body, target)
        assert rebound.response_fields == fields and rebound.body is None and rebound.target == target


def test_async_search_ids_in_the_path_are_unwrapped(binder):
    wrapped = binder.wrap("acme", "FmRldE8z")
    for target, sent in [(f"/_async_search/{wrapped}?wait_for_completion_timeout=1s",
                          "/_async_search/FmRldE8z?wait_for_completion_timeout=1s"),
                         (f"/_async_search/status/{wrapped}", "/_async_search/status/FmRldE8z")]:
        call, body = call_and_body("GET", target)
        assert binder.rebind("acme", call, body, target).target == sent
    call, body = call_and_body("DELETE", f"/_async_search/{wrapped}")
    assert binder.rebind("acme", call, body, f"/_async_search/{wrapped}").response_fields == ()


def test_a_bound_id_in_the_source_parameter_is_400(binder):
    from urllib.parse import quote
    source = quote(orjson.dumps({"pit": {"id": binder.wrap("acme", PIT_ID)}}).decode(), safe="")
    target = f"/_search?source={source}&source_content_type=application/json"
    call, body = call_and_body("GET", target)
    with pytest.raises(BadRequest):
        binder.rebind("acme", call, body, target)
