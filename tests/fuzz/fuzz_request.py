"""Coverage-guided fuzzing of everything a request meets before it reaches a node, with atheris.

Not part of the test suite (atheris is not a dependency); tests/fuzz/README.md says how to run it.
Each input becomes a method, a request target, a Content-Type, a Content-Encoding and a body,
and goes through what flow does with them: parse_call, the path grant, decode_body, the body
grant, id binding, the cost estimate, and a response head's id wrapping. A refusal must be a 4xx;
anything else escaping is a crash. A request the grants let through must name only indices the
independent oracle (tests/fuzz/oracle.py) allows.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from proxy import esapi
    from proxy.config import HardLimits, hash_secret, parse_config
    from proxy.cost import CostModel, Weights
    from proxy.errors import Refusal
    from proxy.idbinding import IdBinder
    from proxy.tenants import Directory, authorize
    from tests.fuzz.oracle import expression_ok, name_ok

LIMITS = HardLimits(max_inflated_bytes=256 * 1024, max_json_depth=20, max_ndjson_lines=100)
MODEL = CostModel(Weights())
ACME = Directory(parse_config({
    "upstream": {"nodes": ["http://127.0.0.1:9200"]},
    "plans": {"p": {}},
    "tenants": {"acme": {"plan": "p", "api_keys": [hash_secret("k")], "indices": ["acme-*", "shared-acme"]}},
})).tenants["acme"]
BINDER = IdBinder(b"k" * 32)
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]
CONTENT_TYPES = [None, "application/json", "application/x-ndjson", "text/plain", "application/smile", "application/yaml"]
ENCODINGS = [None, "gzip", "deflate", "identity", "br", "gzip, deflate"]
HEAD_FIELDS = [(b"_scroll_id",), (b"pit_id",), (b"id", b"pit_id")]


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris's name
    fdp = atheris.FuzzedDataProvider(data)
    method = fdp.PickValueInList(METHODS)
    target = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
    ctype = fdp.PickValueInList(CONTENT_TYPES)
    encoding = fdp.PickValueInList(ENCODINGS)
    head_fields = fdp.PickValueInList(HEAD_FIELDS)
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    BINDER.wrap_head("acme", raw, head_fields)
    try:
        call = esapi.parse_call(method, target)
        authorize(ACME, call, None)
        body = esapi.decode_body(call, raw, ctype, encoding, LIMITS)
        authorize(ACME, call, body or esapi.NO_BODY)
        BINDER.rebind("acme", call, body, target)
    except Refusal as refusal:
        if not 400 <= refusal.status < 500:
            raise AssertionError(f"a refusal that is not a 4xx: {refusal.status} {refusal.reason}") from None
        return
    if call.indices and not call.cluster and not expression_ok(list(call.indices)):
        raise AssertionError(f"passed with indices outside the grant: {call.indices}")
    for name in call.targets:
        if not name_ok(name):
            raise AssertionError(f"passed with a target outside the grant: {name!r}")
    estimate = MODEL.estimate(call, body)
    if not (math.isfinite(estimate.cost) and estimate.cost > 0):
        raise AssertionError(f"cost {estimate.cost}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
