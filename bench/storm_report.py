"""What bench/storm.py prints and keeps: per mode and phase summaries, the tables, the latency plot,
and the cluster's section of bench/RESULTS.md (`storm` for the simulator, `storm-<flavor>` for real ones).

Everything here reads the raw results bench/storm.py saved (bench/out/storm-<cluster>.json), so
`--report-only` redraws it all without rerunning.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from bench import report

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"

#: targets of the issue (bench/RESULTS.md "Goals")
STORM_TARGET, NODE_DOWN_TARGET, ONSET_TARGET, DAMAGE_TARGET = 1.5, 2.0, 2.0, 10.0
ONSET_S = 3  # the storm's first seconds, judged one second at a time
SETTLE_S = 10.0  # also reported: the storm phase without its first seconds, to tell a transient from a steady state
STORM_PHASES = ("storm", "node down", "node back")


def world_facts(world, plan: dict) -> dict:
    """What the report needs to know about the cluster the run used."""
    return {
        "name": world.name, "title": world.title, "describe": world.describe(), "threads": world.threads,
        "capacity": world.capacity, "measured_capacity": world.measured_capacity, "load": asdict(world.load),
        "plan": plan, "victim": world.victim, "tenants": list(world.tenants), "storming": list(world.storming),
        "indices": {name: world.index_of(name) for name in world.tenants},
    }


# ---------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy

    return float(numpy.percentile(values, q))


def at_time(samples: list[dict], t: float) -> dict:
    """The sample taken closest to t seconds after t0."""
    return min(samples, key=lambda s: abs(s["t"] - t))


def good_rows(result: dict):
    """(index, tenant, scheduled - t0, latency s, status, lag s) of every good-tenant request."""
    good, t0 = result["good"], result["t0"]
    for i, row in enumerate(zip(good["tenant"], good["scheduled"], good["latency"], good["status"], good["lag"])):
        tenant_i, scheduled, latency, status, lag = row
        yield i, tenant_i, scheduled - t0, latency, status, lag


def per_second_p99(result: dict, start: float, seconds: int) -> list[float | None]:
    """p99 of the 2xx good-tenant latencies (s) scheduled in each of `seconds` one-second bins from `start`."""
    bins: list[list[float]] = [[] for _ in range(seconds)]
    for _, _, t, latency, status, _ in good_rows(result):
        k = int(t - start) if t >= start else -1
        if 0 <= k < seconds and 200 <= status < 300:
            bins[k].append(latency)
    return [percentile(b, 99) for b in bins]


def summarize(result: dict, facts: dict) -> list[dict]:
    """One row per phase: the good tenants' latency and errors; the storm's share of the live cluster;
    rejections, queue and CPU."""
    good, samples = result["good"], result["samples"]
    storming = set(facts["storming"])
    bursty = good["bursty"]
    names = good["tenants"]
    cause_of = dict(good["cause"])
    failovers = dict(good.get("failovers", []))
    rows = []
    for name, start, end in result["phases"]:
        ok, late, lags = [], [], []
        steady_errors = bursty_errors = steady_total = bursty_total = failed_over = 0
        causes: dict[str, int] = {}
        for i, tenant_i, t, latency, status, lag in good_rows(result):
            if not start <= t < end:
                continue
            lags.append(lag)
            failed_over += i in failovers
            success = 200 <= status < 300
            if not success:
                cause = cause_of.get(i, f"HTTP {status}")
                causes[cause] = causes.get(cause, 0) + 1
            if tenant_i == bursty:
                bursty_total += 1
                bursty_errors += not success
            else:
                steady_total += 1
                steady_errors += not success
            if success:
                ok.append(latency)
                if t >= start + SETTLE_S:
                    late.append(latency)
        inside = [s for s in samples if start <= s["t"] <= end] or [at_time(samples, (start + end) / 2)]
        first, last = at_time(samples, start), at_time(samples, end)
        seconds = max(last["t"] - first["t"], 1e-9)

        def thread_ms(names_: set | None) -> float:
            keys = set(last["thread_ms"]) | set(first["thread_ms"])
            return sum(last["thread_ms"].get(k, 0.0) - first["thread_ms"].get(k, 0.0) for k in keys
                       if names_ is None or (k in names_))

        storm_ms = thread_ms(storming) / seconds
        good_ms = thread_ms(set(names)) / seconds
        live_threads = sum(s["live_threads"] for s in inside) / len(inside)
        cpu = {group: (last["cpu"][group] - first["cpu"].get(group, 0.0)) / seconds * 100 for group in last["cpu"]}
        rows.append({
            "phase": name, "start": start, "end": end,
            "p50": percentile(ok, 50), "p99": percentile(ok, 99), "p99_late": percentile(late, 99),
            "steady_errors": steady_errors, "steady_total": steady_total,
            "bursty_errors": bursty_errors, "bursty_total": bursty_total, "causes": causes, "failed_over": failed_over,
            "storm_ms_per_s": storm_ms, "good_ms_per_s": good_ms, "live_threads": live_threads,
            "storm_share": storm_ms / (live_threads * 1000.0) if live_threads else 0.0,
            "rejected": last["rejected"] - first["rejected"], "max_queue": max(s["queue"] for s in inside),
            "lag_p99": percentile(lags, 99), "cpu": cpu,
        })
    base = rows[0]["p99"]
    storm_start = rows[1]["start"]
    onset = per_second_p99(result, storm_start, ONSET_S)
    rows[1]["onset"] = [None if (p is None or not base) else p / base for p in onset]
    return rows


def gate_timing(result: dict) -> list[dict]:
    """Per Sluicegate instance: its limit and live search threads before the kill, how long after the
    node's death (kill -9 done) the gate counted the smaller cluster, and after the node rejoined the
    whole one again (s; negative: the gate saw it before the cluster reported all nodes)."""
    gates, events = result.get("gates") or [], result["events"]
    if not gates:
        return []
    killed, back = events["killed"], events["back"]
    out = []
    for i in range(len(gates[0]["gates"])):
        series = [(g["t"], g["gates"][i]) for g in gates if g["gates"][i].get("limit") is not None]
        before = [g for t, g in series if t < events["kill"]]
        if not before:
            continue
        full = before[-1]
        threads = full["search_threads"]
        shrunk = next(((t, g) for t, g in series if t >= killed and (g["search_threads"] or 0) < threads), None)
        down = [g["limit"] for t, g in series if shrunk and shrunk[0] <= t < back]
        regrown = next(((t, g) for t, g in series if t >= (shrunk[0] if shrunk else back) and t >= events["restart"]
                        and (g["search_threads"] or 0) >= threads), None)
        out.append({
            "instance": i, "limit_before": full["limit"], "threads_before": threads,
            "shrunk_after_s": None if shrunk is None else shrunk[0] - killed,
            "threads_down": None if shrunk is None else shrunk[1]["search_threads"],
            "limit_down": None if not down else sorted(down)[len(down) // 2],
            "regrown_after_s": None if regrown is None else regrown[0] - back,
            "limit_after": None if regrown is None else regrown[1]["limit"],
        })
    return out


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f}" if value < 1 else f"{value * 1000:,.0f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def causes_text(causes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1])) or "—"


def fair_share(facts: dict) -> float:
    """The storming tenants' share of the cluster by plan weight (every tenant is on the same plan)."""
    return len(facts["storming"]) / len(facts["tenants"])


def tables(results: list[dict], facts: dict, summaries: dict[str, list[dict]]) -> list[report.Table]:
    main = report.Table(
        "Good tenants per mode and phase (latency of 2xx responses, from the scheduled arrival); the storm's share "
        "of the live cluster's search threads; the cluster's rejections, queue and CPU",
        ["mode", "phase", "s", "good p50 ms", "good p99 ms", "p99 / baseline", "steady errors", "bursty errors",
         "who refused the good tenants", "storm % of live capacity", "cluster rejected", "max search queue",
         "cluster CPU % of a core"],
        right={2, 3, 4, 5, 6, 7, 9, 10, 11, 12},
    )
    for result in results:
        rows = summaries[result["mode"]]
        base = rows[0]["p99"]
        for i, row in enumerate(rows):
            main.add(result["label"] if i == 0 else "", row["phase"], f"{row['end'] - row['start']:.0f}",
                     ms(row["p50"]), ms(row["p99"]), times(ratio(row["p99"], base)),
                     f"{row['steady_errors']} / {row['steady_total']}", f"{row['bursty_errors']} / {row['bursty_total']}",
                     causes_text(row["causes"]), f"{row['storm_share'] * 100:.0f}%", f"{row['rejected']:,.0f}",
                     f"{row['max_queue']:,}", f"{row['cpu'].get('cluster', 0):.0f}%")
        main.rule()
    out = [main, verdicts(results, facts, summaries), storm_table(results, facts, summaries)]
    gates = gate_table(results)
    if gates.rows:
        out.append(gates)
    out.append(load_table(results, summaries))
    view = sluicegate_view(results, facts)
    if view.rows:
        out.append(view)
    if facts["name"] == "sim":
        costs = cost_view(results, facts)
        if costs is not None:
            out.append(costs)
    out.append(goals(results, facts, summaries))
    return out


def verdicts(results: list[dict], facts: dict, summaries: dict[str, list[dict]]) -> report.Table:
    """The questions an operator asks of each setting, one row per mode."""
    table = report.Table(
        "Does a setting protect the good tenants — from the storm, its onset and a lost node — without refusing "
        "the dashboard's bursts?",
        ["mode", "storm p99 / baseline", f"… after its first {SETTLE_S:g} s", f"storm's first {ONSET_S} s, worst "
         "1-s p99 / baseline", "node down", "node back", "recovery", "good errors (all phases)",
         "storm % of live capacity (storm / node down / node back)", "good requests failed over"],
    )
    for result in results:
        rows = summaries[result["mode"]]
        base = rows[0]["p99"]
        onset = [x for x in rows[1].get("onset", []) if x is not None]
        errors = sum(r["steady_errors"] + r["bursty_errors"] for r in rows)
        table.add(result["label"], times(ratio(rows[1]["p99"], base)), times(ratio(rows[1]["p99_late"], base)),
                  times(max(onset) if onset else None), times(ratio(rows[2]["p99"], base)),
                  times(ratio(rows[3]["p99"], base)), times(ratio(rows[4]["p99"], base)), errors,
                  " / ".join(f"{r['storm_share'] * 100:.0f}%" for r in rows[1:4]),
                  sum(r["failed_over"] for r in rows))
    return table


def storm_table(results: list[dict], facts: dict, summaries: dict[str, list[dict]]) -> report.Table:
    workers = facts["load"]["storm_workers"]
    table = report.Table(
        f"Storming tenants from the storm's start to its end ({len(facts['storming'])} tenants × {workers} closed-loop "
        "workers), and CPU (% of one core) over the storm phase",
        ["mode", "attempts/s", "2xx/s", "429/s", "429 reasons", "calls failed", "CPU cluster", "CPU proxy",
         "CPU good load", "CPU storm load", "good lag p99 ms"],
    )
    for result in results:
        rows = summaries[result["mode"]]
        seconds = max(rows[3]["end"] - rows[1]["start"], 1e-9)
        counts = result["storm"]["tenants"].values()
        attempts = sum(c["attempts"] for c in counts)
        oks = sum(c["ok"] for c in counts)
        rejected = sum(c["rejected"] for c in counts)
        reasons: dict[str, int] = {}
        for c in counts:
            for reason, n in c["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        failed = sum(c["failed_calls"] for c in counts)
        reason_text = ", ".join(f"{k} {v / seconds:,.1f}/s" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        cpu = rows[1]["cpu"]
        table.add(result["label"], f"{attempts / seconds:,.1f}", f"{oks / seconds:,.1f}", f"{rejected / seconds:,.1f}",
                  reason_text or "—", f"{failed:,}",
                  *(f"{cpu.get(g, 0):.0f}%" for g in ("cluster", "proxy", "good load", "storm load")),
                  ms(rows[1]["lag_p99"]))
    return table


def gate_table(results: list[dict]) -> report.Table:
    table = report.Table(
        "The gate and the lost node: each Sluicegate's limit (requests in flight) and the live search threads it "
        "counted, before the kill, while the node was gone, and after it rejoined (gate read every 0.25 s)",
        ["mode", "instance", "limit before", "search threads before", "smaller cluster counted after (s from the "
         "node's death)", "search threads then", "limit while down (median)", "whole cluster counted again "
         "(s from its rejoin)", "limit after"],
        right={1, 2, 3, 4, 5, 6, 7, 8},
    )
    for result in results:
        for row in gate_timing(result):
            table.add(result["label"], row["instance"], f"{row['limit_before']:.1f}", row["threads_before"],
                      "never" if row["shrunk_after_s"] is None else f"{row['shrunk_after_s']:.2f}",
                      row["threads_down"] if row["threads_down"] is not None else "—",
                      "—" if row["limit_down"] is None else f"{row['limit_down']:.1f}",
                      "never" if row["regrown_after_s"] is None else f"{row['regrown_after_s']:+.2f}",
                      "—" if row["limit_after"] is None else f"{row['limit_after']:.1f}")
    return table


def load_table(results: list[dict], summaries: dict[str, list[dict]]) -> report.Table:
    table = report.Table(
        "The machine before each mode (/proc/loadavg; 2 cores shared with other work) and during its baseline",
        ["mode", "load average 1 / 5 / 15 min", "cluster CPU in the baseline", "proxy CPU in the baseline",
         "good lag p99 ms (baseline)", "node killed → rejoined (s)"],
    )
    for result in results:
        base = summaries[result["mode"]][0]
        events = result["events"]
        table.add(result["label"], " / ".join(result["loadavg"]), f"{base['cpu'].get('cluster', 0):.0f}%",
                  f"{base['cpu'].get('proxy', 0):.0f}%", ms(base["lag_p99"]),
                  f"{events['back'] - events['killed']:.1f} (restart after {events['restart'] - events['killed']:.0f})")
    return table


MARK_OF_PHASE = {"baseline": "storm", "storm": "kill", "node down": "back", "node back": "storm_end", "recovery": "end"}


def sluicegate_view(results: list[dict], facts: dict) -> report.Table:
    """What Sluicegate believed at each phase end: learned costs and bucket levels, good vs storming."""
    import numpy

    storming = set(facts["storming"])
    table = report.Table(
        "Sluicegate's view at the end of each phase (/tenants; cost units ≈ cluster-ms)",
        ["mode", "at the end of", "gate limit", "good: learned cost, max", "good: search bucket, min",
         "good: in flight + queued", "storm: learned cost, median", "storm: search bucket, median"],
    )
    for result in results:
        marks = {m["after"]: m for m in result.get("marks", [])}
        if not marks:
            continue
        for phase in (p[0] for p in result["phases"]):
            sample = marks.get(MARK_OF_PHASE[phase])
            if sample is None:
                continue
            good_cost, good_level, good_busy, storm_cost, storm_level, limits = [], [], 0, [], [], []
            for instance in sample["tenants"]:
                limits.append(instance.get("gate", {}).get("limit"))
                for name, info in instance.get("tenants", {}).items():
                    costs = [c["cost"] for c in info.get("learned_costs", [])]
                    level = info.get("buckets", {}).get("search", {}).get("level")
                    if name in storming:
                        storm_cost += costs
                        storm_level += [] if level is None else [level]
                    else:
                        good_cost += costs
                        good_level += [] if level is None else [level]
                        good_busy += info.get("in_flight", 0) + info.get("queued", 0)
            table.add(result["label"], phase, " / ".join("—" if x is None else f"{x:.1f}" for x in limits),
                      f"{max(good_cost, default=0):,.0f}", f"{min(good_level, default=0):,.0f}", good_busy,
                      f"{numpy.median(storm_cost) if storm_cost else 0:,.0f}",
                      f"{numpy.median(storm_level) if storm_level else 0:,.0f}")
        table.rule()
    return table


def cost_view(results: list[dict], facts: dict) -> report.Table | None:
    """The simulator's query shapes three ways: Sluicegate's estimate before it has seen one, what it
    learned from the responses (median over tenants, at the end of the run), and what the simulated
    cluster's service-time model actually spends on it (cluster-ms, all shards, fetch aside)."""
    try:
        import numpy

        from bench.loadgen import CHEAP, EXPENSIVE
        from bench.simcluster import SearchRequest
        from bench.storm_clusters import SimWorld
        from proxy.config import HardLimits
        from proxy.cost import CostModel, IndexSizes, Weights
        from proxy.esapi import decode_body, parse_call
    except ImportError:
        return None
    import orjson

    learned: dict[str, dict[str, float]] = {}  # fingerprint -> tenant -> cost, from the last /tenants of each mode
    for result in results:
        marks = result.get("marks") or []
        for instance in marks[-1]["tenants"] if marks else []:
            for name, info in instance.get("tenants", {}).items():
                for entry in info.get("learned_costs", []):
                    learned.setdefault(entry["fingerprint"], {})[f"{result['mode']}/{name}"] = entry["cost"]
    if not learned:
        return None
    model, limits = CostModel(Weights()), HardLimits()
    per_shard = SimWorld.VIRTUAL_DOCS / SimWorld.SHARDS
    sizes = IndexSizes({f"{name}-logs": SimWorld.VIRTUAL_DOCS + 40 for name in facts["tenants"]})
    storming = facts["storming"]
    good = [n for n in facts["tenants"] if n not in storming]
    table = report.Table("What each query costs: Sluicegate's first estimate (index size unknown, and polled), "
                         "what it learned, and the simulator's own model (cost units ≈ cluster-ms)",
                         ["query", "tenants", "estimate, size unknown", "estimate, size polled", "learned (median)",
                          "simulated cluster-ms"])
    for kind, bodies, names in (("storm", EXPENSIVE, storming), ("good", CHEAP, good)):
        for body in bodies:
            raw = orjson.dumps(body)
            costs, estimate, sized = [], None, None
            for name in names:
                call = parse_call("POST", f"/{name}-logs/_search")
                body_ = decode_body(call, raw, "application/json", None, limits)
                estimate = model.estimate(call, body_)
                sized = model.estimate(call, body_, sizes)
                costs += learned.get(f"{estimate.fingerprint:016x}", {}).values()
            search = SearchRequest(body, {})
            simulated = SimWorld.SHARDS * search.shard_ms(per_shard, search.matches(0, per_shard, per_shard), 0)
            table.add(f"`{raw.decode()[:70]}{'…' if len(raw) > 70 else ''}`", kind, f"{estimate.cost:,.1f}",
                      f"{sized.cost:,.1f}", f"{numpy.median(costs):,.1f}" if costs else "—", f"{simulated:,.1f}")
    return table


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def goals(results: list[dict], facts: dict, summaries: dict[str, list[dict]]) -> report.Table:
    table = report.Table("Goals (issue 20's targets)", ["goal", "measured", "target", ""], right={1, 2})
    fair = fair_share(facts)
    nginx_storm = {r["label"]: summaries[r["mode"]][1]["p99"] for r in results if r["mode"].startswith("nginx")}
    for result in results:
        rows = summaries[result["mode"]]
        label, base = result["label"], rows[0]["p99"]
        if result["mode"] == "direct":
            damage = ratio(rows[1]["p99"], base)
            errors = rows[1]["steady_errors"] + rows[1]["bursty_errors"]
            table.add(f"{label}: the damage, good p99 under storm / baseline", times(damage), f"≥ {DAMAGE_TARGET:g}×",
                      mark(damage is not None and damage >= DAMAGE_TARGET or errors == rows[1]["steady_total"]
                           + rows[1]["bursty_total"]))
        if not result["mode"].startswith("sluicegate"):
            continue
        storm, down = ratio(rows[1]["p99"], base), ratio(rows[2]["p99"], base)
        onset = [x for x in rows[1].get("onset", []) if x is not None]
        worst_onset = max(onset) if onset else None
        errors = sum(r["steady_errors"] + r["bursty_errors"] for r in rows)
        share = max(r["storm_share"] for r in rows[1:4])
        table.add(f"{label}: good p99 under storm / baseline", times(storm), f"≤ {STORM_TARGET:g}×",
                  mark(storm is not None and storm <= STORM_TARGET))
        table.add(f"{label}: good p99 with one node of three down / baseline", times(down), f"≤ {NODE_DOWN_TARGET:g}×",
                  mark(down is not None and down <= NODE_DOWN_TARGET))
        table.add(f"{label}: onset, worst 1-s good p99 of the storm's first {ONSET_S} s / baseline", times(worst_onset),
                  f"≤ {ONSET_TARGET:g}×", mark(worst_onset is not None and worst_onset <= ONSET_TARGET))
        table.add(f"{label}: good-tenant errors, all phases", f"{errors}", "0", mark(errors == 0))
        table.add(f"{label}: storm's share of the live cluster, highest storm phase", f"{share * 100:.0f}%",
                  f"< {fair * 100:.0f}% (its plan weight)", mark(share < fair))
        if nginx_storm and rows[1]["p99"]:
            best = min(nginx_storm.items(), key=lambda kv: kv[1] or float("inf"))
            if best[1]:
                table.add(f"{label}: good p99 under storm vs the best nginx setting ({best[0]})",
                          f"{best[1] / rows[1]['p99']:.1f}× better", "(report)", "")
    return table


# ---------------------------------------------------------------------------------------------
# the plot
# ---------------------------------------------------------------------------------------------


def plot(results: list[dict], facts: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy

    storming = set(facts["storming"])
    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.4 * len(results)), sharex=True, sharey=True,
                             squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        good, t0 = result["good"], result["t0"]
        t = numpy.array(good["scheduled"]) - t0
        latency = numpy.array(good["latency"]) * 1000
        status = numpy.array(good["status"])
        tenant_i = numpy.array(good["tenant"])
        ok = (status >= 200) & (status < 300)
        bursty = tenant_i == good["bursty"]
        events = result["events"]
        ax.axvspan(events["storm"], events["storm_end"], color="tab:red", alpha=0.06, lw=0)
        ax.axvspan(events["killed"], events["back"], color="tab:grey", alpha=0.12, lw=0)
        ax.axvline(events["killed"], color="tab:red", ls="--", lw=1)
        ax.axvline(events["back"], color="tab:green", ls="--", lw=1)
        ax.scatter(t[ok & ~bursty], latency[ok & ~bursty], s=3, color="tab:blue", alpha=0.5, label="steady tenants")
        ax.scatter(t[ok & bursty], latency[ok & bursty], s=3, color="tab:green", alpha=0.5, label="dashboard")
        if (~ok).any():
            ax.scatter(t[~ok], numpy.full((~ok).sum(), 20000.0), marker="x", s=12, color="tab:red",
                       label=f"errors ({(~ok).sum()})")
        edges = numpy.arange(0, result["phases"][-1][2] + 1, 1.0)
        p99 = [numpy.percentile(latency[ok & (t >= a) & (t < a + 1)], 99) if (ok & (t >= a) & (t < a + 1)).any()
               else numpy.nan for a in edges[:-1]]
        ax.step(edges[:-1], p99, where="post", color="black", lw=1, label="p99 per second")
        samples = result["samples"]
        if len(samples) > 1:
            twin = ax.twinx()
            ts = numpy.array([s["t"] for s in samples])
            storm_ms = numpy.array([sum(v for k, v in s["thread_ms"].items() if k in storming) for s in samples])
            live = numpy.array([max(s["live_threads"], 1) for s in samples[1:]]) * 1000.0
            rate = numpy.diff(storm_ms) / numpy.maximum(numpy.diff(ts), 1e-3) / live * 100
            twin.plot(ts[1:], rate, color="tab:orange", lw=1, alpha=0.8)
            twin.set_ylim(0, 110)
            twin.set_ylabel("storm % of\nlive cluster", color="tab:orange", fontsize=7)
            twin.tick_params(labelsize=7, colors="tab:orange")
        ax.set_yscale("log")
        ax.set_ylim(0.5, 40000)
        ax.set_title(result["label"], fontsize=9, loc="left")
        ax.set_ylabel("latency ms", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=4, markerscale=3)
    axes[-1, 0].set_xlabel("seconds (storm shaded; node killed at the red dashed line, rejoined at the green one, "
                           "grey between; errors drawn at 20 s)")
    fig.suptitle(f"{facts['title']}: good-tenant latency over time per mode (orange: the storm's share of the live "
                 "cluster's search threads)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------


def publish(saved: dict, write_results: bool = True) -> None:
    results, facts = saved["results"], saved["world"]
    summaries = {r["mode"]: summarize(r, facts) for r in results}
    rendered = tables(results, facts, summaries)
    for table in rendered:
        table.print()
    name = facts["name"]
    figure_name = "storm_latency.png" if name == "sim" else f"storm_latency_{name}.png"
    figure = OUT / figure_name
    plot(results, facts, figure)
    print(f"figure: {figure.relative_to(REPO)}")
    if not write_results:
        return
    report.FIGURES.mkdir(parents=True, exist_ok=True)
    shutil.copy(figure, report.FIGURES / figure_name)
    phases = saved["phases"]
    load, plan = facts["load"], facts["plan"]
    section = "storm" if name == "sim" else f"storm-{name}"
    script = "bench/storm.py" if name == "sim" else f"bench/storm.py --cluster {name}"
    report.update_section(section, "\n\n".join([
        f"### Storm on {facts['title']}: good tenants, ten storming tenants and a lost node",
        f"Command: `{saved['command']}` — {len(results)} modes, phases {phases['baseline']:g} s baseline / "
        f"{phases['storm']:g} s storm / node down (restarted after {phases['node_down']:g} s, until it rejoined) / "
        f"{phases['node_back']:g} s node back / {phases['recovery']:g} s recovery, {saved['elapsed_s'] / 60:.1f} min "
        "in all. The cluster on CPU 0, the proxies, nginx, Redis and both load generators on CPU 1 (`taskset`).",
        report.machine_markdown(saved["machine"]),
        facts["describe"],
        f"Good tenants: 3 steady at {load['steady_rate']:g} req/s Poisson + a dashboard firing {load['burst']} parallel "
        f"searches every ~{load['burst_every_s']:g} s. Storm: {len(facts['storming'])} tenants × "
        f"{load['storm_workers']} closed-loop workers, immediate retries on 429/502/503/504 (3, as elasticsearch-py), "
        f"load generator at nice {saved.get('storm_nice', 10)}. Sluicegate plan for every tenant: search "
        f"{plan['search']['rate']:,}/s burst {plan['search']['burst']:,} (the {len(facts['tenants'])} budgets sum to "
        f"{plan['search']['rate'] * len(facts['tenants']) / max(facts['measured_capacity'], 1):.1f}× the measured "
        f"capacity), max_concurrent {plan['max_concurrent']} ({plan['max_concurrent'] * len(facts['tenants'])} for "
        f"{facts['threads']} search threads), max_queue {plan['max_queue']}, max_wait_ms {plan['max_wait_ms']}; "
        "health checks and cluster polls every 2 s (the shipped defaults).",
        *(f"**{t.title}**\n\n{t.markdown()}" for t in rendered),
        f"![good-tenant latency over time per mode, {facts['title']}](results/{figure_name})",
    ]), script=script)
