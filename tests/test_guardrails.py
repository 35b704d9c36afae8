"""Guardrails (proxy/guardrails.py): pure rewriting of searches within a plan's bounds, or refusal."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import GuardrailsConfig
from proxy.guardrails import GuardrailRefused, guard, time_ms

RAILS = GuardrailsConfig(max_size=500, max_from=1000, max_terms_agg_size=100, timeout="30s", terminate_after=100_000,
                         allow_leading_wildcards=False, allow_scripts=False, allow_regexp=False)
NUMBERS = {"max_size": "size", "max_from": "from"}

sizes = st.one_of(st.none(), st.integers(min_value=0, max_value=100_000))
words = st.text(alphabet="abcxyz", min_size=1, max_size=6)
patterns = st.builds(lambda lead, w, tail: lead + w + tail, st.sampled_from(["", "*", "?", "**"]), words,
                     st.sampled_from(["", "*"]))
timeouts = st.one_of(st.none(), st.sampled_from(["1s", "10s", "30s", "31s", "2m", "500ms", "-1", "0s"]))


@st.composite
def searches(draw) -> dict:
    body: dict = {}
    for key in ("size", "from", "terminate_after"):
        value = draw(sizes)
        if value is not None:
            body[key] = value
    timeout = draw(timeouts)
    if timeout is not None:
        body["timeout"] = timeout
    clauses = [{"wildcard": {"msg": {"value": draw(patterns)}}} for _ in range(draw(st.integers(0, 2)))]
    clauses += [{"match": {"msg": draw(words)}}]
    body["query"] = {"bool": {"filter": clauses}}
    if draw(st.booleans()):
        inner = {"terms": {"field": "n", "size": draw(st.integers(1, 5000))}}
        body["aggs"] = {"by_n": {**inner, "aggs": {"deeper": {"terms": {"field": "m", "size": draw(st.integers(1, 5000))}}}}}
    return body


def _bounded(body: dict, rails: GuardrailsConfig) -> None:
    assert body.get("size", 0) <= rails.max_size
    assert body.get("from", 0) <= rails.max_from
    assert 0 < body["terminate_after"] <= rails.terminate_after
    assert 0 < time_ms(body["timeout"]) <= time_ms(rails.timeout)
    text = orjson.dumps(body)
    assert b'"*' not in text and b'"?' not in text  # no pattern starts with a wildcard
    for agg in _terms_aggs(body.get("aggs", {})):
        assert agg["size"] <= rails.max_terms_agg_size


def _terms_aggs(aggs: dict):
    for agg in aggs.values():
        if "terms" in agg:
            yield agg["terms"]
        yield from _terms_aggs(agg.get("aggs", {}))


@settings(max_examples=300, deadline=None)
@given(searches())
def test_a_capped_search_is_within_every_bound_and_passes_the_guardrails_again(body):
    before = orjson.dumps(body)
    outcome = guard(RAILS, "acme", "search", "/acme-x/_search", {}, body, None)
    assert orjson.dumps(body) == before  # pure: what it was given is not changed
    sent = outcome.json if outcome is not None else body  # None: within every bound already
    _bounded(sent, RAILS)
    assert guard(RAILS, "acme", "search", "/acme-x/_search", {}, sent, None) is None  # a fixed point
    # Nothing the guardrails do not bound is touched.
    assert sent["query"]["bool"]["filter"][-1] == body["query"]["bool"]["filter"][-1]
    if outcome is not None:
        assert orjson.loads(outcome.data) == outcome.json and outcome.changes


@settings(max_examples=300, deadline=None)
@given(searches())
def test_refuse_mode_refuses_exactly_what_cap_mode_would_change(body):
    capped = guard(RAILS, "acme", "search", "/acme-x/_search", {}, body, None)
    if capped is None:  # within every bound: refuse mode lets it through too
        assert guard(RAILS.model_copy(update={"mode": "refuse"}), "acme", "search", "/a/_search", {}, body, None) is None
        return
    for name in set(capped.hits):
        rails = RAILS.model_copy(update={"modes": {name: "refuse"}})
        with pytest.raises(GuardrailRefused) as refused:
            guard(rails, "acme", "search", "/acme-x/_search", {}, body, None)
        assert refused.value.status == 400 and f"guardrail [{refused.value.guardrail}]" in refused.value.reason
        assert "tenant 'acme'" in refused.value.reason
    everything = RAILS.model_copy(update={"mode": "refuse"})
    with pytest.raises(GuardrailRefused):
        guard(everything, "acme", "search", "/acme-x/_search", {}, body, None)
    # and a search already within bounds passes refuse mode untouched
    assert guard(everything, "acme", "search", "/acme-x/_search", {}, capped.json, None) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(searches(), min_size=1, max_size=5))
def test_every_search_of_an_msearch_is_capped(bodies):
    lines = tuple(item for body in bodies for item in ({"index": "acme-x"}, body))
    outcome = guard(RAILS, "acme", "msearch", "/_msearch", {}, None, lines)
    if outcome is None:  # every search within bounds already
        sent = list(lines)
    else:
        sent = [orjson.loads(line) for line in outcome.data.splitlines()]
        assert sent == list(outcome.lines)
    assert len(sent) == 2 * len(bodies)
    assert sent[0::2] == [{"index": "acme-x"}] * len(bodies)  # headers as they were
    for body in sent[1::2]:
        _bounded(body, RAILS)


def test_query_string_parameters_are_capped_too_and_the_header_says_what_changed():
    rails = GuardrailsConfig(max_size=500, max_from=100, timeout="30s", allow_leading_wildcards=False)
    params = {"size": "10000", "from": "5", "timeout": "5m", "q": "msg:*error AND level:warn"}
    outcome = guard(rails, "acme", "search", "/acme-x/_search?size=10000&from=5&timeout=5m&q=msg%3A%2Aerror+AND+level%3Awarn",
                    params, None, None)
    assert outcome.target == "/acme-x/_search?size=500&from=5&timeout=30s&q=msg%3Aerror%20AND%20level%3Awarn"
    assert outcome.header() == (b"X-Sluicegate-Degraded: size=10000->500, timeout=5m->30s, "
                                b"query msg:*error AND level:warn->msg:error AND level:warn\r\n")
    assert outcome.data is None  # no body: the timeout rides in the query string already


def test_what_cannot_be_capped_is_refused_in_cap_mode_and_script_fields_are_dropped():
    with pytest.raises(GuardrailRefused, match=r"guardrail \[allow_scripts\]"):
        guard(RAILS, "acme", "search", "/a/_search", {}, {"query": {"script": {"script": "doc['n'].value > 1"}}}, None)
    with pytest.raises(GuardrailRefused, match=r"guardrail \[allow_regexp\]"):
        guard(RAILS, "acme", "search", "/a/_search", {}, {"query": {"regexp": {"msg": "ab.*c"}}}, None)
    with pytest.raises(GuardrailRefused, match=r"guardrail \[allow_leading_wildcards\]"):
        guard(RAILS, "acme", "search", "/a/_search", {}, {"query": {"wildcard": {"msg": "***"}}}, None)
    outcome = guard(GuardrailsConfig(allow_scripts=False), "acme", "search", "/a/_search", {},
                    {"script_fields": {"x": {"script": "1"}}, "sort": [{"_script": {}}, "n"]}, None)
    assert outcome.json == {"sort": ["n"]} and outcome.changes == ["script_fields dropped", "script sort dropped"]


def test_the_header_never_carries_a_line_break_from_a_query():
    outcome = guard(GuardrailsConfig(allow_leading_wildcards=False), "acme", "search", "/a/_search", {},
                    {"query": {"wildcard": {"msg": "*x\r\nX-Evil: 1"}}}, None)
    header = outcome.header()
    assert header.count(b"\r\n") == 1 and header.endswith(b"\r\n")
