"""The token-bucket table: every case runs against the compiled table ("c") and its Python twin ("py"),
and a differential test holds the two to the same results on random operation sequences."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import _ratelimit, _ratelimit_py

KEY = "acme:search"


@pytest.fixture(scope="module", params=[_ratelimit, _ratelimit_py], ids=["c", "py"])
def impl(request):
    """The module under test: `impl.TokenBucketTable`, `impl.TableFull`."""
    return request.param


def close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# ---------------------------------------------------------------- examples


def test_new_key_starts_full(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=5.0)
    assert table.level(KEY, 5.0) == 100.0
    assert table.level(KEY, 500.0) == 100.0  # never above burst
    assert len(table) == 1 and KEY in table and table.keys() == [KEY]


def test_admit_charges_and_refusal_says_when(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)
    assert table.try_acquire(KEY, 60.0, 0.0) == 0.0
    assert table.level(KEY, 0.0) == 40.0
    # 60 wanted, 40 there: 20 units at 10/s
    assert table.try_acquire(KEY, 60.0, 0.0) == pytest.approx(2.0)
    assert table.level(KEY, 0.0) == 40.0
    assert table.try_acquire(KEY, 60.0, 2.0) == 0.0
    assert table.level(KEY, 2.0) == pytest.approx(0.0)


def test_cost_above_burst_is_never_admissible(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)
    assert table.try_acquire(KEY, 100.5, 0.0) == math.inf
    assert table.try_acquire(KEY, 100.0, 0.0) == 0.0


def test_zero_cost_waits_out_debt(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)
    table.force_charge(KEY, 150.0, 0.0)
    assert table.try_acquire(KEY, 0.0, 0.0) == pytest.approx(5.0)
    assert table.try_acquire(KEY, 0.0, 5.0) == 0.0


def test_invalid_arguments(impl):
    table = impl.TokenBucketTable()
    with pytest.raises(ValueError):
        table.configure(KEY, rate=0.0, burst=1.0, now=0.0)
    with pytest.raises(ValueError):
        table.configure(KEY, rate=1.0, burst=-1.0, now=0.0)
    with pytest.raises(ValueError):
        table.configure(KEY, rate=float("nan"), burst=1.0, now=0.0)
    assert KEY not in table
    table.configure(KEY, rate=1.0, burst=1.0, now=0.0)
    for call in (table.try_acquire, table.force_charge, table.credit):
        with pytest.raises(ValueError):
            call(KEY, -1.0, 0.0)
    with pytest.raises(ValueError):
        impl.TokenBucketTable(max_keys=0)
    with pytest.raises(ValueError):
        impl.TokenBucketTable(max_keys=2**30 + 1)


def test_unknown_key_is_a_key_error(impl):
    table = impl.TokenBucketTable()
    for call in (table.try_acquire, table.force_charge, table.credit):
        with pytest.raises(KeyError):
            call("nobody:search", 1.0, 0.0)
    with pytest.raises(KeyError):
        table.level("nobody:search", 0.0)
    with pytest.raises(KeyError):
        table.remove("nobody:search")


def test_time_running_backwards_counts_as_no_time(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=10.0)
    table.force_charge(KEY, 100.0, 10.0)
    assert table.level(KEY, 9.0) == 0.0
    # an operation in the past must not move the slot's clock back and grant the gap twice
    table.force_charge(KEY, 5.0, 8.0)
    assert table.level(KEY, 10.0) == -5.0
    assert table.level(KEY, 11.0) == pytest.approx(5.0)


def test_force_charge_goes_into_debt_down_to_max_debt(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)  # max_debt defaults to burst
    assert table.force_charge(KEY, 150.0, 0.0) == -50.0
    assert table.force_charge(KEY, 500.0, 0.0) == -100.0
    table.configure("globex:search", rate=10.0, burst=100.0, now=0.0, max_debt=30.0)
    assert table.force_charge("globex:search", 1000.0, 0.0) == -30.0
    table.configure("initech:search", rate=10.0, burst=100.0, now=0.0, max_debt=0.0)
    assert table.force_charge("initech:search", 1000.0, 0.0) == 0.0


def test_credit_caps_at_burst(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)
    table.force_charge(KEY, 150.0, 0.0)
    assert table.credit(KEY, 20.0, 0.0) == -30.0
    assert table.credit(KEY, 1000.0, 0.0) == 100.0


def test_last_level_reports_what_the_last_call_saw(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)
    assert table.last_level == 100.0
    table.try_acquire(KEY, 30.0, 0.0)
    assert table.last_level == 70.0
    table.try_acquire(KEY, 90.0, 0.0)  # refused: the level it saw
    assert table.last_level == 70.0
    table.force_charge(KEY, 100.0, 0.0)
    assert table.last_level == -30.0
    table.credit(KEY, 10.0, 0.0)
    assert table.last_level == -20.0


def test_reconfigure_refills_at_the_old_rate_then_clamps(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)
    table.force_charge(KEY, 100.0, 0.0)
    # one second at the OLD rate (10/s), not the new one
    table.configure(KEY, rate=1000.0, burst=100.0, now=1.0)
    assert table.level(KEY, 1.0) == pytest.approx(10.0)
    assert table.level(KEY, 1.05) == pytest.approx(60.0)
    # a smaller burst clamps the level down
    table.configure(KEY, rate=1000.0, burst=5.0, now=1.05)
    assert table.level(KEY, 1.05) == 5.0


def test_reconfigure_to_a_smaller_max_debt_forgives_the_excess(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0, max_debt=100.0)
    table.force_charge(KEY, 200.0, 0.0)
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0, max_debt=40.0)
    assert table.level(KEY, 0.0) == -40.0


def test_remove_frees_the_slot_for_a_fresh_key(impl):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)
    table.force_charge(KEY, 150.0, 0.0)
    table.remove(KEY)
    assert KEY not in table and len(table) == 0
    table.configure("globex:search", rate=1.0, burst=7.0, now=0.0)
    assert table.level("globex:search", 0.0) == 7.0
    table.configure(KEY, rate=10.0, burst=100.0, now=0.0)
    assert table.level(KEY, 0.0) == 100.0  # a removed key comes back fresh


def test_growth_keeps_every_bucket(impl):
    table = impl.TokenBucketTable()
    for i in range(1000):
        table.configure(f"tenant-{i}:search", rate=1.0, burst=1000.0, now=0.0)
        table.force_charge(f"tenant-{i}:search", float(i), 0.0)
    assert len(table) == 1000
    assert all(table.level(f"tenant-{i}:search", 0.0) == 1000.0 - i for i in range(1000))
    assert sorted(table.keys()) == sorted(f"tenant-{i}:search" for i in range(1000))


def test_churn_keeps_every_key_findable(impl):
    # removals leave holes that later keys reuse; every survivor must still be found
    table = impl.TokenBucketTable()
    live: dict[str, float] = {}
    for round_ in range(20):
        for i in range(200):
            key = f"tenant-{round_ * 200 + i}:search"
            table.configure(key, rate=1.0, burst=1000.0, now=0.0)
            table.force_charge(key, float(i), 0.0)
            live[key] = 1000.0 - i
        for key in list(live)[::2]:
            table.remove(key)
            del live[key]
    assert len(table) == len(live)
    assert sorted(table.keys()) == sorted(live)
    assert all(table.level(key, 0.0) == level for key, level in live.items())
    assert "tenant-0:search" not in table and 42 not in table
    # every key ever removed stays gone, and looking for it is a clean KeyError
    for n in range(4000):
        key = f"tenant-{n}:search"
        if key not in live:
            assert key not in table
            with pytest.raises(KeyError):
                table.level(key, 0.0)


def test_eviction_at_scale_frees_each_slot_once(impl):
    table = impl.TokenBucketTable(max_keys=500)
    for i in range(500):
        table.configure(f"tenant-{i}:search", rate=1.0, burst=10.0, now=0.0)
    table.force_charge("tenant-7:search", 4.0, 0.0)
    table.configure("newcomer:search", rate=1.0, burst=10.0, now=1.0)
    assert sorted(table.keys()) == ["newcomer:search", "tenant-7:search"]
    # refill the table: each new key must get a slot of its own
    for i in range(498):
        table.configure(f"late-{i}:search", rate=1.0, burst=10.0, now=1.0)
        table.force_charge(f"late-{i}:search", i / 100, 1.0)
    assert len(table) == 500
    assert all(table.level(f"late-{i}:search", 1.0) == pytest.approx(10.0 - i / 100) for i in range(498))
    assert table.level("tenant-7:search", 1.0) == 7.0


def test_full_table_evicts_idle_buckets(impl):
    table = impl.TokenBucketTable(max_keys=3)
    for name in ("a", "b", "c"):
        table.configure(f"{name}:search", rate=1.0, burst=10.0, now=0.0)
    table.force_charge("b:search", 5.0, 0.0)
    table.configure("d:search", rate=1.0, burst=10.0, now=1.0)
    # a and c were full (idle): both go; b still owes, d is new
    assert sorted(table.keys()) == ["b:search", "d:search"]
    with pytest.raises(KeyError):
        table.try_acquire("a:search", 1.0, 1.0)


def test_full_table_with_nothing_idle_refuses_new_keys(impl):
    table = impl.TokenBucketTable(max_keys=2)
    for name in ("a", "b"):
        table.configure(f"{name}:search", rate=1.0, burst=10.0, now=0.0)
        table.force_charge(f"{name}:search", 1.0, 0.0)
    with pytest.raises(impl.TableFull):
        table.configure("c:search", rate=1.0, burst=10.0, now=0.5)
    assert sorted(table.keys()) == ["a:search", "b:search"]
    # existing keys can always be reconfigured, and refilled buckets become evictable
    table.configure("a:search", rate=2.0, burst=10.0, now=0.5)
    table.configure("c:search", rate=1.0, burst=10.0, now=5.0)
    assert "c:search" in table and len(table) == 1


def test_table_full_is_a_plain_exception(impl):
    assert issubclass(impl.TableFull, Exception)
    assert impl.TableFull.__module__.startswith("proxy.")


# ---------------------------------------------------------------- properties

rates = st.floats(min_value=0.01, max_value=1e4)
bursts = st.floats(min_value=0.01, max_value=1e5)
costs = st.floats(min_value=0.0, max_value=2e5)
steps = st.floats(min_value=0.0, max_value=50.0)


@st.composite
def traffic(draw):
    """A history that leaves a bucket at any level: admissions, debts and credits over time."""
    ops = draw(st.lists(
        st.tuples(st.sampled_from(["try_acquire", "force_charge", "credit"]), costs, steps), max_size=30,
    ))
    return ops


def replay(table, ops, now: float = 0.0) -> float:
    for op, amount, dt in ops:
        now += dt
        getattr(table, op)(KEY, amount, now)
    return now


@given(rate=rates, burst=bursts, requests=st.lists(st.tuples(steps, costs, st.booleans()), max_size=80))
def test_admitted_cost_never_exceeds_burst_plus_rate_times_window(impl, rate, burst, requests):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate, burst, 0.0)
    admitted: list[tuple[float, float]] = []
    now = 0.0
    for dt, cost, debt in requests:
        now += dt
        if debt:  # debts can only shrink what is admitted later
            table.force_charge(KEY, cost, now)
        elif table.try_acquire(KEY, cost, now) == 0.0:
            admitted.append((now, cost))
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for end, cost in admitted[i:]:
            total += cost
            bound = burst + rate * (end - start)
            assert total <= bound + 1e-9 * max(1.0, bound)


@given(rate=rates, burst=bursts, max_debt=st.floats(min_value=-1.0, max_value=1e5), history=traffic(),
       cost=costs, dt=steps, later=steps)
def test_refused_try_acquire_changes_nothing(impl, rate, burst, max_debt, history, cost, dt, later):
    table = impl.TokenBucketTable()
    untouched = impl.TokenBucketTable()
    for t in (table, untouched):
        t.configure(KEY, rate, burst, 0.0, max_debt)
        now = replay(t, history) + dt
    before = table.level(KEY, now)
    wait = table.try_acquire(KEY, cost, now)
    if wait > 0:
        assert wait == math.inf or close(wait, (cost - before) / rate)
        assert table.level(KEY, now) == before
        # and nothing changed for the future either: same as a table that was never asked
        assert table.level(KEY, now + later) == untouched.level(KEY, now + later)
    else:
        assert close(table.level(KEY, now), before - cost)


@given(rate=rates, burst=bursts, history=traffic(), dt=steps, new_rate=rates, new_burst=bursts,
       max_debt=st.floats(min_value=0.0, max_value=1e5))
def test_reconfigure_never_creates_tokens(impl, rate, burst, history, dt, new_rate, new_burst, max_debt):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate, burst, 0.0, max_debt)
    now = replay(table, history) + dt
    before = table.level(KEY, now)
    table.configure(KEY, new_rate, new_burst, now, max_debt)
    assert table.level(KEY, now) <= before


@given(rate=rates, burst=bursts, history=traffic(), dt=steps, new_rate=rates, new_burst=bursts,
       max_debt=st.floats(min_value=-1.0, max_value=1e5), new_max_debt=st.floats(min_value=-1.0, max_value=1e5))
def test_reconfigure_only_forgives_debt_beyond_the_new_floor(
    impl, rate, burst, history, dt, new_rate, new_burst, max_debt, new_max_debt
):
    table = impl.TokenBucketTable()
    table.configure(KEY, rate, burst, 0.0, max_debt)
    now = replay(table, history) + dt
    before = table.level(KEY, now)
    table.configure(KEY, new_rate, new_burst, now, new_max_debt)
    floor = -(new_max_debt if new_max_debt >= 0 else new_burst)
    after = table.level(KEY, now)
    assert after <= max(before, floor)
    assert floor <= after <= new_burst


# ---------------------------------------------------------------- compiled vs twin

# more names than the index's first 8 cells hold, so growth, tombstones and rebuilds are exercised
KEYS = [f"{tenant}:{resource}" for tenant in ("acme", "globex", "initech", "hooli", "umbrella")
        for resource in ("search", "write", "read")]
times = st.one_of(
    st.floats(min_value=0.0, max_value=20.0),  # mostly forward
    st.floats(min_value=0.0, max_value=0.5),
    st.just(0.0),  # several operations in the same instant
    st.floats(min_value=-5.0, max_value=0.0),  # now and then the clock steps back
)


def now_and_then(valid, invalid):
    """Mostly `valid`, one time in ten `invalid`: the table must refuse bad input the same way."""
    return st.tuples(st.sampled_from([True] * 9 + [False]), valid, invalid).map(lambda t: t[1] if t[0] else t[2])


amounts = now_and_then(st.one_of(costs, st.floats(min_value=0.0, max_value=100.0)), st.just(-1.0))
max_debts = st.one_of(st.just(-1.0), st.floats(min_value=0.0, max_value=1e5))
settings_ = st.tuples(now_and_then(rates, st.sampled_from([0.0, -1.0])), bursts, max_debts)
# weights by repetition: most traffic is decisions on keys that exist
operations = st.one_of(
    *[st.tuples(st.just("configure"), st.sampled_from(KEYS), times, settings_)] * 2,
    *[st.tuples(st.just(name), st.sampled_from(KEYS), times, amounts)
      for name in ["try_acquire"] * 3 + ["force_charge", "credit"]],
    st.tuples(st.just("level"), st.sampled_from(KEYS), times),
    st.tuples(st.just("remove"), st.sampled_from(KEYS)),
)


def outcome(table, op):
    """What one operation returned (or raised), plus what the table looks like afterwards."""
    name, key, *args = op
    try:
        if name == "configure":
            now, (rate, burst, max_debt) = args
            result = table.configure(key, rate, burst, now, max_debt)
        elif name == "remove":
            result = table.remove(key)
        else:
            result = getattr(table, name)(key, *args[1:], args[0])
    except (KeyError, ValueError, _ratelimit.TableFull, _ratelimit_py.TableFull) as exc:
        result = type(exc).__name__
    return result, sorted(table.keys()), table.last_level


@given(max_keys=st.integers(min_value=1, max_value=16),
       prelude=st.tuples(*[st.tuples(st.just("configure"), st.just(key), st.just(0.0), st.tuples(rates, bursts, max_debts))
                           for key in KEYS[:10]]),
       ops=st.lists(operations, max_size=100))
def test_compiled_table_matches_the_python_twin(max_keys, prelude, ops):
    compiled = _ratelimit.TokenBucketTable(max_keys)
    twin = _ratelimit_py.TokenBucketTable(max_keys)
    now = 0.0
    for op in [*prelude, *ops]:
        if len(op) > 2:  # turn each step into an absolute time, as the proxy's clock would
            now += op[2]
            op = (*op[:2], now, *op[3:])
        got, want = outcome(compiled, op), outcome(twin, op)
        (c_result, c_keys, c_last), (p_result, p_keys, p_last) = got, want
        assert c_keys == p_keys, op
        assert close(c_last, p_last), op
        if isinstance(p_result, float):
            assert isinstance(c_result, float) and close(c_result, p_result), (op, c_result, p_result)
        else:
            assert c_result == p_result, (op, c_result, p_result)
    for key in compiled.keys():
        assert close(compiled.level(key, now + 1.0), twin.level(key, now + 1.0))
