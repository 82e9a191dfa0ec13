"""The compare report: one self-contained ``report.html`` plus ``summary.csv`` and ``summary.json``.

Everything here is a pure function of a :class:`~gpuscale.experiments.compare.CompareResult`: no clock,
no file paths, no wall times. The same result therefore gives the same bytes in all three files, which
is what lets ``gpuscale compare`` promise that two runs with the same seeds agree byte for byte.

Plots are drawn on private :class:`~matplotlib.figure.Figure` objects with the Agg canvas (never
pyplot, so no global figure state), under matplotlib's default style plus the fixed settings in
``_RC`` so a user's ``matplotlibrc`` cannot change the output, and saved as PNG without the
"Software" metadata chunk so a matplotlib upgrade does not change the bytes either. The PNGs are
embedded as base64 ``data:`` URIs: the HTML needs nothing but itself.

Every policy keeps one colour, line style and marker (its :class:`_Style`) across all figures of a
report, assigned in the order of ``CompareResult.policies``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.style import context as style_context
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
from matplotlib.typing import RcKeyType

from gpuscale.experiments.compare import METRICS, CompareResult, Estimate, PolicyRow
from gpuscale.experiments.oracle import OracleResult
from gpuscale.experiments.references import LABELS, TITLES, Feasibility
from gpuscale.experiments.runner import RunOutcome
from gpuscale.sim.kernel import bucket_values

__all__ = ["bound_note", "report_files", "verdict"]

# -- number formatting --------------------------------------------------------------------------------
_SIG_DIGITS = 9
"""Significant digits kept for floats in summary.json/csv: far below the simulator's own noise, and
enough to drop the last-bit differences that would otherwise make equal results print differently."""


def _num(value: Any) -> float | int | None:
    """A JSON/CSV-ready number: ints stay ints, floats are rounded, NaN/inf become None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    v = float(value)
    if not math.isfinite(v):
        return None
    return float(f"{v:.{_SIG_DIGITS}g}")


def _clean(obj: Any) -> Any:
    """Recursively make ``obj`` JSON-ready with :func:`_num` for every number."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, float, np.integer, np.floating)):
        return _num(obj)
    return str(obj)


def _csv_cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    n = _num(value) if isinstance(value, (int, float, np.integer, np.floating)) else value
    if n is None:
        return ""
    return repr(n) if isinstance(n, float) else str(n)


def _target(fraction: float) -> str:
    """The SLO target as written in a config: 0.99 → "99 %", 0.995 → "99.5 %"."""
    return f"{fraction * 100:.6g} %"


def _pct(fraction: float) -> str:
    """A fraction as a percentage: 0.996 → "99.6 %" (see :func:`_pct_number`)."""
    return f"{_pct_number(fraction)} %"


def _pct_number(fraction: float) -> str:
    """A fraction as a percentage without the sign, with two decimals only where the difference between
    99.6 % and 99.96 % matters (the last percent is where SLO attainment is decided)."""
    p = fraction * 100.0
    decimals = 2 if 99.0 <= p < 100.0 else 1
    text = f"{p:.{decimals}f}"
    # Never round 99.96 % up to "100.0 %": it would read as "every request in time".
    if fraction < 1.0 and float(text) >= 100.0:
        text = f"{math.floor(p * 100) / 100:.2f}"
    return text


def _decimals(value: float) -> int:
    """Decimals that show about three significant digits (12.3, 1.23, 0.123; 1234 stays whole)."""
    a = abs(value)
    if a >= 100 or a == 0:
        return 0
    if a >= 10:
        return 1
    if a >= 1:
        return 2
    return 3


def _count(value: float) -> str:
    """A count averaged over seeds: whole where it is whole, with thousands separators."""
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _plain(value: float) -> str:
    """About three significant digits, thousands separated: 0.654, 2.78, 13.1, 1,183."""
    return f"{value:,.{_decimals(value)}f}"


def _relative(fraction: float) -> str:
    """A relative difference (0.18 → "18 %"), one decimal below one percent."""
    p = abs(fraction) * 100.0
    return f"{p:.1f} %" if p < 1.0 else f"{p:.0f} %"


# -- the table ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Column:
    metric: str
    header: str
    kind: str
    """pct (a fraction shown in %), ms, count, num, usd, util (already in %), ratio."""


_COLUMNS: tuple[_Column, ...] = (
    _Column("slo_attainment", "SLO attainment (%)", "pct"),
    _Column("latency_p95_ms", "p95 (ms)", "ms"),
    _Column("latency_p99_ms", "p99 (ms)", "ms"),
    _Column("rejected", "Rejected", "count"),
    _Column("timed_out", "Timed out", "count"),
    _Column("gpu_hours", "GPU-hours", "num"),
    _Column("gpu_hours_x_oracle", "× oracle", "ratio"),
    _Column("cost_usd", "Cost ($)", "usd"),
    _Column("node_hours", "Node-hours", "num"),
    _Column("pending_pod_s", "Pending pod-s", "num"),
    _Column("cold_starts", "Cold starts", "count"),
    _Column("scale_events", "Scale events", "count"),
    _Column("mean_gpu_memory_util_pct", "GPU memory (%)", "util"),
    _Column("mean_sm_util_pct", "SM util (%)", "util"),
)


_NODE_COLUMNS = ("node_hours", "pending_pod_s")
"""Columns shown only for a scenario with a node layer (elsewhere nodes are fixed and pods rarely wait)."""


def _columns_for(result: CompareResult, scenario: str) -> tuple[_Column, ...]:
    """The ranked table's columns for ``scenario``: node-hours and pending pod-seconds only where a
    node layer makes them move (pending pod-seconds also where some pod did wait)."""
    if result.has_node_layer(scenario):
        return _COLUMNS
    waited = any((_mean(r, "pending_pod_s") or 0.0) > 0 for r in result.rows_for(scenario))
    return tuple(
        c for c in _COLUMNS if c.metric not in _NODE_COLUMNS or (c.metric == "pending_pod_s" and waited)
    )


def _row_estimate(row: PolicyRow, metric: str) -> Estimate:
    if metric == "gpu_hours_x_oracle":
        return row.gpu_hours_x_oracle
    return row.estimates.get(metric, Estimate(None, 0.0, 0))


def _format_estimate(est: Estimate, kind: str) -> tuple[str, str]:
    """The mean and the ``±`` half-width as text in the column's unit (the unit is in the header).

    The half-width is left out for a single seed, and where it rounds to zero at the mean's precision
    ("99.99 ± 0.00" says no more than "99.99").
    """
    if est.mean is None:
        return "–", ""
    m, h = est.mean, est.half_width
    if kind == "pct":
        mean = _pct_number(m)
        decimals = len(mean.partition(".")[2])
        ci = f"{h * 100:.{decimals}f}"
    elif kind == "count":
        mean, ci = _count(m), _count(h)
    elif kind in ("usd", "ratio"):
        mean, ci = f"{m:,.2f}", f"{h:,.2f}"
    elif kind == "util":
        mean, ci = f"{m:.1f}", f"{h:.1f}"
    else:
        d = _decimals(m)
        mean, ci = f"{m:.{d}f}", f"{h:.{d}f}"
    if est.n < 2 or float(ci.replace(",", "")) == 0.0:
        return mean, ""
    return mean, f"± {ci}"


# -- the verdict --------------------------------------------------------------------------------------
def _mean(row: PolicyRow, metric: str) -> float | None:
    return _row_estimate(row, metric).mean


def _slo_phrase(result: CompareResult, scenario: str) -> str:
    slo = result.slo_ms.get(scenario)
    return f"the {_plain(slo)} ms SLO" if slo is not None else "the SLO"


def _oracle_phrase(row: PolicyRow) -> str:
    x = row.gpu_hours_x_oracle.mean
    return f" ({x:.1f}× the oracle)" if x is not None else ""


def _never_scaled(runs: Sequence[RunOutcome]) -> int | None:
    """The replica count a policy held throughout, when it never changed it on any seed."""
    summaries = [r.summary for r in runs if r.summary is not None]
    if not summaries or any(s.scale_events > 0 for s in summaries):
        return None
    return max(s.max_replicas for s in summaries)


def _shorten(text: str, limit: int = 120) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1].rstrip() + "…"


def verdict(result: CompareResult, scenario: str) -> str:
    """Two to four sentences on ``scenario``, generated from the numbers.

    In order: the cheapest policy that meets the SLO target (or, when none does, the one with the best
    attainment); the other Pareto-optimal policies and what they trade; the policy that missed the SLO
    worst (and whether it ever scaled); and the runs that failed, with their error.
    """
    rows = result.rows_for(scenario)
    if not rows:
        return f"No policy ran on {scenario}."
    slo = _slo_phrase(result, scenario)
    target = _target(result.slo_target)
    measured = [
        r for r in rows if _mean(r, "slo_attainment") is not None and _mean(r, "gpu_hours") is not None
    ]
    sentences: list[str] = []
    best: PolicyRow | None = None
    worst: PolicyRow | None = None
    if not measured:
        sentences.append("Every run failed, so there is nothing to rank.")
    else:

        def att(r: PolicyRow) -> float:
            return _mean(r, "slo_attainment") or 0.0

        def gpu(r: PolicyRow) -> float:
            return _mean(r, "gpu_hours") or 0.0

        meeting = [r for r in measured if r.meets_slo]
        if meeting:
            best = min(meeting, key=lambda r: (gpu(r), -att(r), r.policy))
            sentences.append(
                f"{best.policy} is the cheapest policy that meets {slo} for {target} of requests: "
                f"it answers {_pct(att(best))} in time with {_plain(gpu(best))} GPU-hours"
                f"{_oracle_phrase(best)}."
            )
        else:
            best = max(measured, key=lambda r: (att(r), -gpu(r), r.policy))
            sentences.append(
                f"No policy met {slo} for {target} of requests; the best, {best.policy}, answers "
                f"{_pct(att(best))} in time with {_plain(gpu(best))} GPU-hours{_oracle_phrase(best)}."
            )
        missing = [r for r in measured if not r.meets_slo and r is not best]
        worst = min(missing, key=lambda r: (att(r), r.policy)) if missing else None
        # The worst policy gets its own sentence. A dearer policy whose attainment reads the same
        # (99.99 % against 99.99 %: Pareto-optimal by one request in a million) buys nothing a reader
        # could see, so it is not offered as a trade. Of the rest, the closest in cost on each side
        # of the pick are named, cheaper ones first: at most three, both directions when both exist.
        others = [
            r
            for r in measured
            if r.pareto
            and r is not best
            and r is not worst
            and (gpu(r) <= gpu(best) or _pct(att(r)) != _pct(att(best)))
        ]
        cheaper = sorted((r for r in others if gpu(r) <= gpu(best)), key=lambda r: (-gpu(r), r.policy))
        dearer = sorted((r for r in others if gpu(r) > gpu(best)), key=lambda r: (gpu(r), r.policy))
        picked = [r for pair in zip_longest(cheaper, dearer) for r in pair if r is not None][:3]
        alternatives = [r for r in cheaper if r in picked] + [r for r in dearer if r in picked]
        if alternatives:
            parts = []
            for r in alternatives:
                change = gpu(r) / gpu(best) - 1.0 if gpu(best) > 0 else 0.0
                if change < 0:
                    parts.append(
                        f"{r.policy} is {_relative(change)} cheaper but answers only {_pct(att(r))} in time"
                    )
                elif change > 0:
                    parts.append(
                        f"{r.policy} answers {_pct(att(r))} in time for {_relative(change)} more GPU-hours"
                    )
                else:
                    parts.append(f"{r.policy} answers {_pct(att(r))} in time for the same GPU-hours")
            joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
            sentences.append(f"On the Pareto frontier, {joined}.")
        elif not any(r.pareto for r in measured if r is not best):
            sentences.append(f"{best.policy} is the only Pareto-optimal policy.")
        if worst is not None:
            held = _never_scaled(result.runs_for(scenario, worst.policy))
            miss = _pct(1.0 - att(worst))
            p95 = _mean(worst, "latency_p95_ms")
            p95_text = f" (p95 {_plain(p95)} ms)" if p95 is not None else ""
            if held is not None:
                noun = "replica" if held == 1 else "replicas"
                sentences.append(
                    f"{worst.policy} never scaled ({held} {noun} throughout) and missed the SLO for "
                    f"{miss} of requests{p95_text}."
                )
            else:
                sentences.append(f"{worst.policy} missed the SLO for {miss} of requests{p95_text}.")
    failed = [r for r in rows if r.failed > 0]
    if failed:
        parts = []
        for r in failed:
            total = len(result.runs_for(scenario, r.policy)) or r.failed
            error = f": {_shorten(r.errors[0])}" if r.errors else ""
            parts.append(f"{r.policy} ({r.failed} of {total} runs{error})")
        sentences.append("Failed: " + "; ".join(parts) + ".")
    return " ".join(sentences)


# -- the references beside the bound ------------------------------------------------------------------
_REFERENCE_TITLES = {label: TITLES[name] for name, label in LABELS.items()}


def reference_rows(result: CompareResult, scenario: str) -> list[PolicyRow]:
    """The references' rows of ``scenario`` (feasible first), apart from the ranked policies."""
    order = list(LABELS.values())
    rows = [r for r in result.references.rows if r.scenario == scenario]
    return sorted(rows, key=lambda r: order.index(r.policy) if r.policy in order else len(order))


def _feasibilities(result: CompareResult, scenario: str) -> list[Feasibility]:
    found = result.references.feasibility
    return [found[(scenario, s)] for s in result.seeds if (scenario, s) in found]


def _reference_phrase(row: PolicyRow, target: float) -> str:
    title = _REFERENCE_TITLES.get(row.policy, row.policy)
    att, x = _mean(row, "slo_attainment"), row.gpu_hours_x_oracle.mean
    if att is None:
        error = f": {_shorten(row.errors[0])}" if row.errors else ""
        return f"the {title} reference failed{error}"
    cost = f" at {x:.2f}× the bound's GPU-hours" if x is not None else ""
    verb = "reaches" if att >= target else "reaches only"
    return f"the {title} reference {verb} {_pct(att)}{cost}"


def bound_note(result: CompareResult, scenario: str) -> str:
    """A plain account of the oracle's bound on ``scenario``: whether any policy could reach it (the
    cluster's size, the cold start, new nodes: :func:`~gpuscale.experiments.references.feasibility`)
    and what the simulator-only references measured (empty when there is neither)."""
    checks = _feasibilities(result, scenario)
    rows = reference_rows(result, scenario)
    if not checks and not rows:
        return ""
    target = result.slo_target
    sentences: list[str] = []
    short = [f for f in checks if not f.reachable]
    if short:
        first = short[0]
        seeds = (
            f"seed {first.seed}"
            if len(checks) == 1
            else f"seed {first.seed}; {len(short)} of {len(checks)} seeds fall short"
        )
        sentences.append(f"The oracle's lower bound cannot be reached here ({seeds}): {first.reason}.")
    elif checks:
        sentences.append(
            "Every pod the oracle's bound holds can be Ready in time on this cluster (from the pods "
            "Ready at the start, the fastest cold start and, where nodes are added, the fastest node)."
        )
    if rows:
        phrases = [_reference_phrase(r, target) for r in rows]
        joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        lead = next(iter(checks), None)
        how = ""
        if lead is not None and any(r.policy == LABELS["feasible"] for r in rows):
            timing = f"{lead.leads.pod_s:,.0f} s for a pod"
            if lead.leads.node_layer:
                timing += f", {lead.leads.node_s:,.0f} s more for a new node"
            how = f" (the oracle's schedule, each pod asked for one real lead time ahead: {timing})"
        sentence = joined[0].upper() + joined[1:]
        if how:
            sentence = sentence.replace("reference", "reference" + how, 1)
        feasible = [r for r in rows if r.policy == LABELS["feasible"]]
        att = _mean(feasible[0], "slo_attainment") if feasible else None
        if att is not None and att < target:
            start = lead.initial_ready if lead is not None else None
            sentence += (
                f"; knowing the future load is not enough to meet {_target(target)} on this cluster from "
                "the scenario's start"
                + (f" ({start} Ready pod{'s' if start != 1 else ''})" if start is not None else "")
            )
        sentences.append(sentence + ".")
    return " ".join(sentences)


# -- summary.json and summary.csv ---------------------------------------------------------------------
def _estimate_dict(est: Estimate) -> dict[str, Any]:
    return {"mean": est.mean, "half_width": est.half_width, "n": est.n}


def _oracle_dict(oracle: OracleResult) -> dict[str, Any]:
    return {
        "capacity_rps_per_replica": oracle.capacity_rps_per_replica,
        "gpu_hours": oracle.gpu_hours,
        "cost_usd": oracle.cost_usd,
        "method": oracle.method,
    }


def _feasibility_dict(f: Feasibility) -> dict[str, Any]:
    return {
        "reachable": f.reachable,
        "short_at_s": f.short_at_s,
        "need": f.need,
        "possible": f.possible,
        "short_windows": f.short_windows,
        "over_windows": f.over_windows,
        "max_replicas": f.max_replicas,
        "pod_lead_s": f.leads.pod_s,
        "node_lead_s": f.leads.node_s,
        "reason": f.reason,
    }


def _summary_json(result: CompareResult) -> str:
    scenarios: dict[str, Any] = {}
    for scenario in result.scenarios:
        policies: dict[str, Any] = {}
        spot = result.has_spot(scenario)
        for rank, row in enumerate(result.rows_for(scenario), start=1):
            runs = {
                str(r.key.seed): {
                    "summary": r.summary.to_dict() if r.summary is not None else None,
                    "error": r.error,
                }
                for r in result.runs_for(scenario, row.policy)
            }
            policies[row.policy] = {
                "rank": rank,
                "estimates": {
                    m: _estimate_dict(row.estimates[m])
                    for m in METRICS
                    if m in row.estimates and (m != "spot_savings_usd" or spot)
                },
                "by_pool": {
                    name: {pool: _estimate_dict(est) for pool, est in pools.items()}
                    for name, pools in row.by_pool.items()
                },
                "gpu_hours_x_oracle": _estimate_dict(row.gpu_hours_x_oracle),
                "pareto": row.pareto,
                "meets_slo": row.meets_slo,
                "failed": row.failed,
                "errors": list(row.errors),
                "runs": runs,
            }
        scenarios[scenario] = {
            "description": result.descriptions.get(scenario, ""),
            "slo_ms": result.slo_ms.get(scenario),
            "node_layer": result.has_node_layer(scenario),
            "spot": spot,
            "pools": result.pools(scenario),
            "oracle": {
                str(seed): _oracle_dict(result.oracles[(scenario, seed)])
                for seed in result.seeds
                if (scenario, seed) in result.oracles
            },
            "policies": policies,
            "verdict": verdict(result, scenario),
        }
        refs = {
            row.policy: {
                "estimates": {m: _estimate_dict(row.estimates[m]) for m in METRICS if m in row.estimates},
                "gpu_hours_x_oracle": _estimate_dict(row.gpu_hours_x_oracle),
                "meets_slo": row.meets_slo,
                "failed": row.failed,
                "errors": list(row.errors),
                "runs": {
                    str(r.key.seed): {
                        "summary": r.summary.to_dict() if r.summary is not None else None,
                        "error": r.error,
                    }
                    for r in result.references.runs
                    if r.key.scenario == scenario and r.key.policy == row.policy
                },
            }
            for row in reference_rows(result, scenario)
        }
        if refs:
            scenarios[scenario]["references"] = refs
        checks = _feasibilities(result, scenario)
        if checks:
            scenarios[scenario]["bound"] = {
                "reachable": all(f.reachable for f in checks),
                "note": bound_note(result, scenario),
                "seeds": {str(f.seed): _feasibility_dict(f) for f in checks},
            }
    doc = {
        "scenarios": scenarios,
        "policies": list(result.policies),
        "seeds": list(result.seeds),
        "slo_target": result.slo_target,
    }
    return json.dumps(_clean(doc), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


_CSV_METRICS: tuple[str, ...] = (*METRICS, "gpu_hours_x_oracle")


def _csv_pools(result: CompareResult) -> list[str]:
    """Pool names for the dollars-by-pool columns: each scenario's in its cluster's order, scenarios in
    the order asked for, every name once."""
    return list(dict.fromkeys(pool for scenario in result.scenarios for pool in result.pools(scenario)))


def _summary_csv(result: CompareResult) -> str:
    """One row per scenario and policy. Dollars by pool are ``node_cost_usd[<pool>]_mean`` / ``_ci95``,
    one pair per pool name, empty for a scenario without that pool; spot savings are empty for a
    scenario without a spot pool."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["scenario", "policy", "rank", "meets_slo", "pareto", "failed", "seeds_ok"]
    for metric in _CSV_METRICS:
        header += [f"{metric}_mean", f"{metric}_ci95"]
    pools = _csv_pools(result)
    for pool in pools:
        header += [f"node_cost_usd[{pool}]_mean", f"node_cost_usd[{pool}]_ci95"]
    writer.writerow([*header, "errors"])
    for scenario in result.scenarios:
        spot = result.has_spot(scenario)
        for rank, row in enumerate(result.rows_for(scenario), start=1):
            cells: list[Any] = [
                scenario,
                row.policy,
                rank,
                row.meets_slo,
                row.pareto,
                row.failed,
                row.estimates["slo_attainment"].n if "slo_attainment" in row.estimates else 0,
            ]
            for metric in _CSV_METRICS:
                est = _row_estimate(row, metric)
                if metric == "spot_savings_usd" and not spot:
                    est = Estimate(None, 0.0, 0)
                cells += [est.mean, est.half_width if est.mean is not None else None]
            by_pool = row.by_pool.get("node_cost_by_pool_usd", {})
            for pool in pools:
                est = by_pool.get(pool, Estimate(None, 0.0, 0))
                cells += [est.mean, est.half_width if est.mean is not None else None]
            cells.append(" | ".join(" ".join(e.split()) for e in row.errors))
            writer.writerow([_csv_cell(c) for c in cells])
    return buf.getvalue()


# -- figures ------------------------------------------------------------------------------------------
_DPI = 100
_WIDTH_IN = 11.0
_RC: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs on every machine
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.dpi": _DPI,
    "savefig.dpi": _DPI,
    "path.simplify": True,
}
_TAB10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
# The oracle is dashed and the SLO dotted, both black: policies beyond the tenth reuse a colour with a
# dash-dot pattern that neither reference line has.
_LINESTYLES: tuple[Any, ...] = ("-", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*", "d")
"""13 markers against 10 colours: since 13 and 10 share no factor, no two of the first 130 policies get
the same colour and marker."""
_REFERENCE = "#222222"


@dataclass(frozen=True)
class _Style:
    colour: str
    linestyle: Any
    marker: str


def _policy_order(result: CompareResult) -> list[str]:
    """The configured policies first, then any that appear only in rows or runs (sorted)."""
    order = list(dict.fromkeys(result.policies))
    extra = {r.policy for r in result.rows} | {r.key.policy for r in result.runs}
    return order + sorted(extra - set(order))


def _styles(result: CompareResult) -> dict[str, _Style]:
    return {
        p: _Style(
            _TAB10[i % len(_TAB10)], _LINESTYLES[(i // len(_TAB10)) % len(_LINESTYLES)], _MARKERS[i % 13]
        )
        for i, p in enumerate(_policy_order(result))
    }


def _figure(height_in: float) -> Figure:
    """A figure of the report's fixed width and DPI on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(_WIDTH_IN, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> str:
    """The figure as a base64 PNG. Without the Software chunk the bytes depend only on the pixels."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _legend_outside(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the whole figure, right of the plots (never over data), labels deduplicated."""
    handles: list[Artist] = []
    labels: list[str] = []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside right upper")


def _time_axis(duration_s: float) -> tuple[float, str]:
    """Minutes for runs of 20 minutes or more (ticks at 0…60 read better than 0…3600)."""
    return (60.0, "min") if duration_s >= 1200 else (1.0, "s")


def _first_seed_runs(result: CompareResult, scenario: str, column: str) -> list[RunOutcome]:
    """The successful runs of the first seed whose timeline has ``column`` and at least one row, in
    policy order (the plots show one seed: the others look alike and would hide each other)."""
    if not result.seeds:
        return []
    seed = result.seeds[0]
    return [
        r
        for p in _policy_order(result)
        for r in result.runs_for(scenario, p)
        if r.key.seed == seed and r.ok and column in r.timeline and len(r.timeline["time_s"]) > 0
    ]


def _timeline_png(result: CompareResult, scenario: str, styles: dict[str, _Style]) -> str | None:
    """Load, Ready replicas against the oracle's schedule, and per-tick p95, for the first seed."""
    runs = _first_seed_runs(result, scenario, "time_s")
    if not runs:
        return None
    seed = runs[0].key.seed
    duration = max(float(np.nanmax(r.timeline["time_s"])) for r in runs)
    scale, unit = _time_axis(duration)
    fig = _figure(8.4)
    ax_load, ax_ready, ax_p95 = fig.subplots(3, 1, sharex=True, height_ratios=[1.0, 1.4, 1.4])

    # Policies tick at different periods (1 s, 2 s, 15 s ...), so the raw per-tick rates differ in
    # resolution and noise. Put them all on one grid, conserving the number of arrivals; on an
    # open-loop workload they then agree and are drawn once, in grey. A closed-loop workload (users who
    # wait for answers) truly differs per policy, and each gets its own line.
    grid = _load_grid(runs, duration)
    loads = [
        _rebin_rate(r.timeline["time_s"], r.timeline["arrival_rps"], grid)
        for r in runs
        if "arrival_rps" in r.timeline
    ]
    if loads:
        peak = max(float(np.nanmax(x)) for x in loads)
        if all(np.allclose(x, loads[0], rtol=0.02, atol=0.01 * peak + 1e-9) for x in loads):
            ax_load.plot(grid / scale, loads[0], color="#555555", lw=1.1, label="offered load")
        else:
            for r, load in zip((r for r in runs if "arrival_rps" in r.timeline), loads, strict=True):
                st = styles[r.key.policy]
                ax_load.plot(grid / scale, load, color=st.colour, ls=st.linestyle, lw=1.1)
    ax_load.set_ylabel("requests/s")
    ax_load.set_title("Arrival rate")
    ax_load.set_ylim(bottom=0)

    for r in runs:
        st = styles[r.key.policy]
        t = r.timeline["time_s"] / scale
        if "ready" in r.timeline:
            ax_ready.step(
                t, r.timeline["ready"], where="post", color=st.colour, ls=st.linestyle, lw=1.5,
                label=r.key.policy, alpha=0.9,
            )  # fmt: skip
        if "p95_ms" in r.timeline:
            p95 = np.where(r.timeline["p95_ms"] > 0, r.timeline["p95_ms"], np.nan)
            ax_p95.plot(t, p95, color=st.colour, ls=st.linestyle, lw=1.1, label=r.key.policy, alpha=0.9)
    oracle = result.oracles.get((scenario, seed))
    if oracle is not None and len(oracle.times_s) > 0:
        ax_ready.step(
            np.asarray(oracle.times_s) / scale, oracle.replicas, where="post", color=_REFERENCE,
            ls="--", lw=1.8, label="oracle schedule",
        )  # fmt: skip
    ax_ready.set_ylabel("Ready replicas")
    ax_ready.set_title(f"Ready replicas per policy (seed {seed}); dashed: the oracle's schedule")
    ax_ready.set_ylim(bottom=0)
    ax_ready.yaxis.set_major_locator(MaxNLocator(integer=True))

    slo = result.slo_ms.get(scenario)
    if slo is not None:
        ax_p95.axhline(slo, color=_REFERENCE, ls=":", lw=1.6, label=f"SLO {_plain(slo)} ms")
    ax_p95.set_yscale("log")
    ax_p95.yaxis.set_major_formatter(FuncFormatter(_ms_tick))
    ax_p95.set_ylabel("p95 latency (ms)")
    ax_p95.set_title("p95 latency per control tick (log scale)")
    ax_p95.set_xlabel(f"time ({unit})")
    ax_p95.set_xlim(0, duration / scale)
    _legend_outside(fig, [ax_ready, ax_load, ax_p95])
    return _png(fig)


def _load_grid(runs: Sequence[RunOutcome], duration_s: float) -> npt.NDArray[np.float64]:
    """Tick ends for the arrival-rate panel: the coarsest policy tick, and no finer than 1/360 of the
    run (10 s on an hour), which smooths Poisson noise without hiding a minute-long spike."""
    ticks = [float(np.median(np.diff(r.timeline["time_s"]))) for r in runs if len(r.timeline["time_s"]) > 1]
    step = max([*ticks, duration_s / 360.0, 1e-9])
    n = max(1, math.floor(duration_s / step + 1e-9))
    return np.arange(1, n + 1, dtype=np.float64) * step


def _rebin_rate(
    time_s: npt.NDArray[np.float64], rate: npt.NDArray[np.float64], grid: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """A per-tick rate (over the tick ending at each ``time_s``) averaged onto ``grid``'s ticks.

    Works on cumulative arrivals: e.g. rates 10, 30 on 1 s ticks ending at 1, 2 are 10 + 30 = 40
    arrivals by t = 2, so on a 2 s grid the rate is 40 / 2 = 20 requests/s.
    """
    t = np.concatenate(([0.0], np.asarray(time_s, dtype=np.float64)))
    arrived = np.concatenate(
        ([0.0], np.cumsum(np.nan_to_num(np.asarray(rate, dtype=np.float64)) * np.diff(t)))
    )
    edges = np.concatenate(([0.0], grid))
    result: npt.NDArray[np.float64] = np.diff(np.interp(edges, t, arrived)) / np.diff(edges)
    return result


def _ms_tick(value: float, _pos: int | None) -> str:
    """Log-axis ticks as plain milliseconds (10, 100, 1000) instead of powers of ten."""
    if value >= 1:
        return f"{value:,.0f}"
    return f"{value:g}"


def _label_points(fig: Figure, ax: Axes, points: Sequence[tuple[float, float, str, str]]) -> None:
    """Name each point beside it; where names would overlap one another or other points, move them
    up or down (in steps of 60 % of a line) until they are clear, with a thin line back to the point.

    Works in pixels after the layout has run, so it sees the same geometry as the saved PNG; the
    names are kept out of the layout so placing them cannot move the axes again.
    """
    if not points:
        return
    fig.draw_without_rendering()
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg), "figures here are made by _figure()"
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]  # untyped in matplotlib's stubs
    font = FontProperties(size=9)
    frame = ax.get_window_extent(renderer)
    pad = 7.0 * fig.dpi / 72.0  # 7 pt between a marker and its name
    centres = [tuple(ax.transData.transform((x, y))) for x, y, _, _ in points]
    taken: list[tuple[float, float, float, float]] = [(cx - 5, cy - 5, cx + 5, cy + 5) for cx, cy in centres]

    def clear(box: tuple[float, float, float, float]) -> bool:
        inside = box[0] >= frame.x0 and box[2] <= frame.x1 + 40 and box[1] >= frame.y0 and box[3] <= frame.y1
        return inside and all(
            box[2] <= o[0] or box[0] >= o[2] or box[3] <= o[1] or box[1] >= o[3] for o in taken
        )

    order = sorted(range(len(points)), key=lambda i: (centres[i][1], centres[i][0]))
    for i in order:
        x, y, name, colour = points[i]
        cx, cy = centres[i]
        w, h, _ = renderer.get_text_width_height_descent(name, font, ismath=False)
        right_first = cx + pad + w <= frame.x1
        chosen: tuple[float, float, bool] | None = None
        for step in range(40):
            dy = (step + 1) // 2 * (0.6 * h) * (1 if step % 2 else -1) if step else 0.0
            for right in (right_first, not right_first):
                x0 = cx + pad if right else cx - pad - w
                box = (x0, cy + dy - h / 2, x0 + w, cy + dy + h / 2)
                if clear(box):
                    chosen = (x0, dy, right)
                    break
            if chosen is not None:
                break
        if chosen is None:
            chosen = (cx + pad if right_first else cx - pad - w, 0.0, right_first)
        x0, dy, right = chosen
        taken.append((x0, cy + dy - h / 2, x0 + w, cy + dy + h / 2))
        to_pt = 72.0 / fig.dpi
        offset = ((x0 - cx if right else x0 + w - cx) * to_pt, dy * to_pt)
        arrow = {"arrowstyle": "-", "color": colour, "lw": 0.6, "shrinkA": 1, "shrinkB": 4} if dy else None
        text = ax.annotate(
            name, (x, y), xytext=offset, textcoords="offset points", ha="left" if right else "right",
            va="center", fontsize=9, color=colour, arrowprops=arrow, annotation_clip=False,
        )  # fmt: skip
        text.set_in_layout(False)


_ATTAINMENT_FLOOR = 1e-4
_ATTAINMENT_CEILING = 1.0 - 1e-6
"""Attainment is drawn on a logit axis, where 0 and 100 % are infinitely far away: values are clipped
into [0.01 %, 99.9999 %] (a policy that answered every request in time sits on the top edge)."""


def _clip_attainment(value: float) -> float:
    return min(max(value, _ATTAINMENT_FLOOR), _ATTAINMENT_CEILING)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _attainment_tick(value: float, _pos: int | None) -> str:
    """Logit-axis ticks as percentages with as many decimals as their nines need: 0.999 → 99.9 %."""
    if not 0.0 < value < 1.0:
        return ""
    tail = 1.0 - value if value > 0.5 else value
    decimals = max(0, math.ceil(-math.log10(tail) - 1e-9) - 2)
    return f"{value * 100:.{decimals}f} %"


def _pareto_png(result: CompareResult, scenario: str, styles: dict[str, _Style]) -> str | None:
    """GPU-hours against SLO attainment per policy, with the frontier, the oracle and the target.

    Attainment is on a logit axis: 90 %, 99 % and 99.9 % are evenly spaced, so policies that differ
    in the last nines stay apart while one that answers only 40 % in time still fits on the plot.
    """
    rows = [
        r
        for r in result.rows_for(scenario)
        if _mean(r, "gpu_hours") is not None and _mean(r, "slo_attainment") is not None
    ]
    if not rows:
        return None
    fig = _figure(6.2)
    ax = fig.subplots()
    ax.set_yscale("logit")
    order = _policy_order(result)
    points: list[tuple[float, float, str, str]] = []
    span = [_clip_attainment(result.slo_target)]
    drawn = sorted(rows, key=lambda r: order.index(r.policy))
    for r in drawn:
        st = styles[r.policy]
        gpu, att = r.estimates["gpu_hours"], r.estimates["slo_attainment"]
        assert gpu.mean is not None and att.mean is not None
        y = _clip_attainment(att.mean)
        low, high = _clip_attainment(att.mean - att.half_width), _clip_attainment(att.mean + att.half_width)
        span.append(y)
        ax.errorbar(
            [gpu.mean], [y], xerr=gpu.half_width or None,
            yerr=[[y - low], [high - y]] if att.half_width else None,
            fmt=st.marker, color=st.colour, ms=8, capsize=3, lw=1.0, zorder=3,
            label=("★ " if r.pareto else "") + r.policy,
        )  # fmt: skip
        # A point on the clipped top edge may be exactly 100 %, which the axis cannot show: say so.
        name = f"{r.policy} ({_pct(att.mean)})" if att.mean >= _ATTAINMENT_CEILING else r.policy
        points.append((gpu.mean, y, name, st.colour))
    front = sorted((x, y) for (x, y, _, _), r in zip(points, drawn, strict=True) if r.pareto)
    if len(front) > 1:
        xs, ys = zip(*front, strict=True)
        ax.plot(xs, ys, color="#999999", lw=1.2, zorder=2, label="Pareto frontier")
    for r, marker in zip(reference_rows(result, scenario), ("D", "P", "X"), strict=False):
        # the references: hollow black markers, apart from the policies (never on the frontier)
        ref_gpu, ref_att = _mean(r, "gpu_hours"), _mean(r, "slo_attainment")
        if ref_gpu is None or ref_att is None:
            continue
        y = _clip_attainment(ref_att)
        span.append(y)
        title = _REFERENCE_TITLES.get(r.policy, r.policy)
        ax.plot(
            [ref_gpu], [y], marker=marker, ms=9, ls="none", mfc="none", mec=_REFERENCE, mew=1.6, zorder=3,
            label=f"{title} (reference)",
        )  # fmt: skip
        points.append((ref_gpu, y, f"{title} (ref)", _REFERENCE))
    oracle_hours = [
        result.oracles[(scenario, s)].gpu_hours for s in result.seeds if (scenario, s) in result.oracles
    ]
    if oracle_hours:
        mean_oracle = float(np.mean(oracle_hours))
        ax.axvline(
            mean_oracle, color=_REFERENCE, ls="--", lw=1.4, label=f"oracle {_plain(mean_oracle)} GPU-h"
        )
    ax.axhline(
        _clip_attainment(result.slo_target), color=_REFERENCE, ls=":", lw=1.4,
        label=f"SLO target {_target(result.slo_target)}",
    )  # fmt: skip
    # The range follows the means and the target, not the bars: with two seeds a 95 % interval can
    # reach from 90 % to 100 %, and would squeeze every point into a corner.
    lo, hi = _logit(min(span)), _logit(max(span))
    pad = max(0.4, 0.12 * (hi - lo))
    ax.set_ylim(1.0 / (1.0 + math.exp(-(lo - pad))), 1.0 / (1.0 + math.exp(-(hi + pad))))
    ax.yaxis.set_major_formatter(FuncFormatter(_attainment_tick))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(left=0)
    ax.set_xlabel("GPU-hours (mean over seeds, bars: 95 % CI)")
    ax.set_ylabel("SLO attainment (% of requests, logit scale)")
    ax.set_title("Cost against SLO attainment (up and left is better)")
    _legend_outside(fig, [ax])
    _label_points(fig, ax, points)
    return _png(fig)


def _cdf_png(result: CompareResult, scenario: str, styles: dict[str, _Style]) -> str | None:
    """Latency CDF and tail per policy from the histograms summed over seeds."""
    values_ms: npt.NDArray[np.float64] = bucket_values() * 1e3
    curves: list[tuple[str, npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
    for policy in _policy_order(result):
        hists = [
            r.latency_hist for r in result.runs_for(scenario, policy) if r.ok and r.latency_hist is not None
        ]
        if not hists:
            continue
        counts = np.sum([np.asarray(h, dtype=np.float64) for h in hists], axis=0)
        total = float(counts.sum())
        if total <= 0:
            continue
        nz = np.flatnonzero(counts)
        lo, hi = int(nz[0]), int(nz[-1])
        cum = np.cumsum(counts)
        # Counted from the top (total − cumulative) so the tail keeps its precision near zero.
        curves.append(
            (policy, values_ms[lo : hi + 1], cum[lo : hi + 1] / total, (total - cum[lo:hi]) / total)
        )
    if not curves:
        return None
    fig = _figure(4.6)
    ax_cdf, ax_tail = fig.subplots(1, 2)
    for policy, x, cdf, tail in curves:
        st = styles[policy]
        ax_cdf.plot(x, cdf, color=st.colour, ls=st.linestyle, lw=1.5, label=policy)
        ax_tail.plot(x[:-1], np.where(tail > 0, tail, np.nan), color=st.colour, ls=st.linestyle, lw=1.5)
    slo = result.slo_ms.get(scenario)
    # Every request in one latency bucket: no point above it for the tail's log scale to show (a log
    # axis with no data has no range), so the tail panel says so instead.
    no_tail = not any(np.any(tail > 0) for *_, tail in curves)
    for ax in (ax_cdf,) if no_tail else (ax_cdf, ax_tail):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_ms_tick))
        ax.set_xlabel("latency (ms)")
        if slo is not None:
            ax.axvline(slo, color=_REFERENCE, ls=":", lw=1.6, label=f"SLO {_plain(slo)} ms")
    ax_cdf.set_ylim(0, 1.01)
    ax_cdf.set_ylabel("fraction of requests ≤ latency")
    ax_cdf.set_title("Latency CDF")
    if no_tail:
        ax_tail.set_axis_off()
        ax_tail.text(0.5, 0.5, "no tail: every request\nin one latency bucket", ha="center", va="center")
    else:
        ax_tail.set_yscale("log")
        ax_tail.set_ylabel("fraction of requests > latency")
        ax_tail.set_title("Tail (log scale)")
    _legend_outside(fig, [ax_cdf, ax_tail])
    return _png(fig)


def _nodes_png(result: CompareResult, scenario: str, styles: dict[str, _Style]) -> str | None:
    """Nodes and pending nodes over time per policy, for the first seed (a scenario with a node layer)."""
    runs = _first_seed_runs(result, scenario, "nodes")
    if not runs:
        return None
    seed = runs[0].key.seed
    duration = max(float(np.nanmax(r.timeline["time_s"])) for r in runs)
    scale, unit = _time_axis(duration)
    fig = _figure(5.6)
    ax_nodes, ax_pending = fig.subplots(2, 1, sharex=True, height_ratios=[1.4, 1.0])
    for r in runs:
        st = styles[r.key.policy]
        t = r.timeline["time_s"] / scale
        ax_nodes.step(
            t, r.timeline["nodes"], where="post", color=st.colour, ls=st.linestyle, lw=1.5,
            label=r.key.policy, alpha=0.9,
        )  # fmt: skip
        if "pending_nodes" in r.timeline:
            ax_pending.step(
                t, r.timeline["pending_nodes"], where="post", color=st.colour, ls=st.linestyle, lw=1.5,
                label=r.key.policy, alpha=0.9,
            )  # fmt: skip
    ax_nodes.set_ylabel("nodes")
    ax_nodes.set_title(f"GPU nodes per policy (seed {seed}): every node billed, starting ones included")
    ax_pending.set_ylabel("pending nodes")
    ax_pending.set_title("Pending nodes: launched, GPUs not yet allocatable")
    for ax in (ax_nodes, ax_pending):
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_pending.set_xlabel(f"time ({unit})")
    ax_pending.set_xlim(0, duration / scale)
    _legend_outside(fig, [ax_nodes, ax_pending])
    return _png(fig)


def _pool_table_html(result: CompareResult, scenario: str) -> str:
    """Dollars by node pool per policy (means over seeds), with the node bill, node-hours and, where a
    pool is spot, what the same node-hours would have cost more on demand."""
    pools = result.pools(scenario)
    spot = result.has_spot(scenario)
    totals = [
        _Column("node_cost_usd", "Total ($)", "usd"),
        _Column("node_hours", "Node-hours", "num"),
    ]
    if spot:
        totals.append(_Column("spot_savings_usd", "Spot savings ($)", "usd"))
    head = "".join(f"<th>$ {_e(pool)}</th>" for pool in pools) + "".join(
        f"<th>{_e(c.header)}</th>" for c in totals
    )
    lines = [
        '<div class="scroll"><table>',
        f'<thead><tr><th class="name">#</th><th class="name">Policy</th>{head}</tr></thead><tbody>',
    ]
    for rank, row in enumerate(result.rows_for(scenario), start=1):
        name = f'<td class="rank">{rank}</td><td class="name">{_e(row.policy)}</td>'
        if row.estimates.get("node_cost_usd", Estimate(None, 0.0, 0)).n == 0:
            lines.append(
                f'<tr class="failed">{name}<td colspan="{len(pools) + len(totals)}">failed</td></tr>'
            )
            continue
        by_pool = row.by_pool.get("node_cost_by_pool_usd", {})
        cells = "".join(
            _cell(_format_estimate(by_pool.get(pool, Estimate(None, 0.0, 0)), "usd")) for pool in pools
        ) + "".join(_cell(_format_estimate(_row_estimate(row, c.metric), c.kind)) for c in totals)
        lines.append(f"<tr>{name}{cells}</tr>")
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


def _nodes_html(result: CompareResult, scenario: str, nodes_png: str | None) -> list[str]:
    """The node section of a scenario with a node layer (nothing for fixed pools)."""
    if not result.has_node_layer(scenario):
        return []
    seed0 = result.seeds[0] if result.seeds else "–"
    spot = (
        " Spot savings: what the same node-hours would have cost on demand, less the bill."
        if result.has_spot(scenario)
        else ""
    )
    return [
        "<h3>Nodes and dollars by pool</h3>",
        '<p class="muted">Here a node autoscaler adds and removes GPU nodes (or spot nodes are '
        "reclaimed), and the cost is the node bill: node-hours × each pool's node price, idle and "
        f"starting nodes included. Means over seeds.{spot}</p>",
        _pool_table_html(result, scenario),
        _figure_html(
            nodes_png,
            f"Nodes of {scenario}",
            f"Seed {seed0}. Top: GPU nodes that exist (billed from launch), per policy. Bottom: nodes "
            "launched whose GPUs are not yet allocatable (provisioning, driver, device plugin).",
        ),
    ]


# -- report.html --------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1f2328;background:#fff;margin:0 auto;max-width:1180px;padding:28px 32px 60px;line-height:1.5}
h1{font-size:26px;margin:0 0 8px}
h2{font-size:21px;margin:44px 0 6px;padding-top:14px;border-top:2px solid #d0d7de}
h3{font-size:15px;margin:22px 0 6px;color:#3b434b}
p{margin:8px 0}
.muted{color:#59636e}
.method{background:#f6f8fa;border-left:3px solid #8c959f;padding:8px 12px;font-size:14px}
.verdict{background:#eef6ff;border-left:4px solid #0969da;padding:10px 14px;font-size:15px}
nav ul{margin:6px 0;padding-left:20px;columns:2}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;margin:8px 0;width:100%}
th,td{padding:5px 8px;border-bottom:1px solid #d8dee4;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f6f8fa;font-weight:600;vertical-align:bottom;white-space:normal}
td.name,th.name{text-align:left}
td.rank{color:#59636e}
tr.meets td.name{border-left:4px solid #2da44e}
tr.misses td.name{border-left:4px solid #d4a72c}
tr.failed td{color:#a40e26;text-align:left;white-space:normal}
tr.failed td.name{border-left:4px solid #cf222e}
tr.reference td{background:#f6f8fa;color:#3b434b;font-style:italic}
tr.reference td.name{border-left:4px dashed #8c959f}
.bound{background:#f6f8fa;border-left:4px dashed #8c959f;padding:8px 12px;font-size:14px}
.err{display:block;color:#a40e26;font-size:12px;white-space:normal;max-width:600px}
.star{color:#bf8700}
.ci{display:block;color:#6e7781;font-size:11px;line-height:1.2}
figure{margin:18px 0}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#59636e;margin-top:4px}
code{font-size:90%}
details{margin:4px 0 8px}
summary{cursor:pointer;color:#0969da;font-size:14px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _slug(name: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "scenario"
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}-{k}", k + 1
    used.add(slug)
    return slug


def _cell(text: tuple[str, str]) -> str:
    mean, ci = text
    return f'<td>{_e(mean)}<span class="ci">{_e(ci)}</span></td>' if ci else f"<td>{_e(mean)}</td>"


def _table_html(result: CompareResult, scenario: str) -> str:
    columns = _columns_for(result, scenario)
    head = "".join(f"<th>{_e(c.header)}</th>" for c in columns)
    lines = [
        '<div class="scroll"><table>',
        f'<thead><tr><th class="name">#</th><th class="name">Policy</th>{head}</tr></thead><tbody>',
    ]
    for rank, row in enumerate(result.rows_for(scenario), start=1):
        star = '<span class="star" title="Pareto-optimal">★</span> ' if row.pareto else ""
        total = len(result.runs_for(scenario, row.policy)) or row.failed
        errors = "; ".join(row.errors) or "no error recorded"
        name = f"{star}{_e(row.policy)}"
        ok_runs = row.estimates["slo_attainment"].n if "slo_attainment" in row.estimates else 0
        if ok_runs == 0:
            lines.append(
                f'<tr class="failed"><td class="rank">{rank}</td><td class="name">{name}</td>'
                f'<td colspan="{len(columns)}"><strong>failed</strong> ({row.failed} of {total} runs): '
                f"{_e(errors)}</td></tr>"
            )
            continue
        if row.failed:
            name += f'<span class="err">{row.failed} of {total} runs failed: {_e(errors)}</span>'
        cells = "".join(_cell(_format_estimate(_row_estimate(row, c.metric), c.kind)) for c in columns)
        css = "meets" if row.meets_slo else "misses"
        lines.append(
            f'<tr class="{css}"><td class="rank">{rank}</td><td class="name">{name}</td>{cells}</tr>'
        )
    for row in reference_rows(result, scenario):
        title = f"{_e(_REFERENCE_TITLES.get(row.policy, row.policy))} (reference)"
        if row.estimates["slo_attainment"].n == 0:
            errors = "; ".join(row.errors) or "no error recorded"
            lines.append(
                f'<tr class="reference"><td class="rank">ref</td><td class="name">{title}</td>'
                f'<td colspan="{len(columns)}"><strong>failed</strong>: {_e(errors)}</td></tr>'
            )
            continue
        cells = "".join(_cell(_format_estimate(_row_estimate(row, c.metric), c.kind)) for c in columns)
        lines.append(
            f'<tr class="reference"><td class="rank">ref</td><td class="name">{title}</td>{cells}</tr>'
        )
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


def _oracle_line(result: CompareResult, scenario: str) -> str:
    oracles = [result.oracles[(scenario, s)] for s in result.seeds if (scenario, s) in result.oracles]
    if not oracles:
        return '<p class="muted">No oracle was computed for this scenario.</p>'
    hours = float(np.mean([o.gpu_hours for o in oracles]))
    cost = float(np.mean([o.cost_usd for o in oracles]))
    cap = float(np.mean([o.capacity_rps_per_replica for o in oracles]))
    seeds = ", ".join(str(o.seed) for o in oracles)
    return (
        f"<p><strong>Oracle</strong> (clairvoyant lower bound): {_plain(hours)} GPU-hours (${cost:,.2f}), "
        f"capacity {_plain(cap)} requests/s per replica at the SLO; "
        f"mean over seed{'s' if len(oracles) > 1 else ''} "
        f"{_e(seeds)}.</p>"
    )


def _oracle_methods_html(result: CompareResult, scenario: str) -> str:
    """The oracle's own account of its method: the first seed's in full, the others' folded away
    (they usually differ only in the seed and the numbers)."""
    oracles = [result.oracles[(scenario, s)] for s in result.seeds if (scenario, s) in result.oracles]
    if not oracles:
        return ""
    first, rest = oracles[0], [o for o in oracles[1:] if o.method != oracles[0].method]
    text = f'<p class="method">{_e(first.method)}</p>'
    if rest:
        items = "".join(f'<p class="method">{_e(o.method)}</p>' for o in rest)
        seeds = ", ".join(str(o.seed) for o in rest)
        label = f"The oracle on seed{'s' if len(rest) > 1 else ''} {_e(seeds)}"
        text += f"<details><summary>{label}</summary>{items}</details>"
    return text


def _bound_html(result: CompareResult, scenario: str) -> str:
    note = bound_note(result, scenario)
    return f'<p class="bound">{_e(note)}</p>' if note else ""


def _references_intro(result: CompareResult) -> str:
    """What the reference rows are, where a compare ran any."""
    if not result.references.names and not result.references.feasibility:
        return ""
    return (
        "<p>Beside the lower bound, each scenario says whether any policy could reach it: every pod the "
        "bound holds must be Ready in time from the pods Ready at the start, the fastest cold start and, "
        "where a node autoscaler adds nodes, the fastest new node; and the load must fit the cluster. "
        "Rows marked <em>ref</em> under the ranked policies are simulator-only references, never "
        "ranked, never on the Pareto front and never in the verdict; their × oracle is relative to the "
        "lower bound like every row's. <em>feasible clairvoyant</em>: the oracle's per-window schedule "
        "(every window carried, no miss budget spent), each pod asked for one real lead time ahead (the "
        "slowest start of every phase, and the slowest new node where one is needed, bridged by "
        "placeholder pods), capped at the cluster, played through the simulator: what knowing the "
        "future reaches on this cluster. <em>receding horizon (perfect model)</em>: at every control "
        "tick, copies of the simulation roll candidate fleet sizes forward over one lead time and a "
        "margin, and the smallest that meets the SLO there is applied: the ceiling of planning.</p>"
    )


def _figure_html(png: str | None, alt: str, caption: str) -> str:
    if png is None:
        return f'<p class="muted">{_e(alt)}: no data (every run failed).</p>'
    return (
        f'<figure><img src="data:image/png;base64,{png}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _cost_note(result: CompareResult) -> str:
    """What the cost column means, where some scenario bills nodes rather than pods' GPUs."""
    if not any(result.has_node_layer(s) for s in result.scenarios):
        return ""
    return (
        " Cost ($) is the GPU-hours pods held × the GPU price on fixed node pools, and the node bill "
        "(node-hours × each pool's node price, idle and starting nodes included) in a scenario with a "
        "node autoscaler, which also gets node-hours, pending pod-seconds, a plot of its nodes and "
        "its dollars by pool."
    )


_Figures = tuple[str | None, str | None, str | None, str | None]
"""A scenario's plots as base64 PNGs: timeline, nodes (None without a node layer), Pareto, CDF."""

_SHARED: CompareResult | None = None
"""The result whose figures forked worker processes draw (:func:`_figures_of`): inherited, not sent."""


def _scenario_figures(result: CompareResult, scenario: str) -> _Figures:
    styles = _styles(result)
    with style_context("default"), mpl.rc_context(_RC):
        return (
            _timeline_png(result, scenario, styles),
            _nodes_png(result, scenario, styles) if result.has_node_layer(scenario) else None,
            _pareto_png(result, scenario, styles),
            _cdf_png(result, scenario, styles),
        )


def _figures_of(scenario: str) -> _Figures:
    assert _SHARED is not None
    return _scenario_figures(_SHARED, scenario)


def _all_figures(result: CompareResult, workers: int) -> dict[str, _Figures]:
    """Every scenario's plots; with ``workers`` > 1 drawn in that many forked processes (each figure
    is drawn by the same code either way, so the bytes are the same)."""
    global _SHARED
    if workers <= 1 or len(result.scenarios) <= 1:
        return {s: _scenario_figures(result, s) for s in result.scenarios}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    _SHARED = result
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(result.scenarios)), mp_context=ctx) as pool:
            return dict(zip(result.scenarios, pool.map(_figures_of, result.scenarios), strict=True))
    finally:
        _SHARED = None


def _report_html(result: CompareResult, workers: int = 1) -> str:
    figures = _all_figures(result, workers)
    n_runs = len(result.runs)
    n_failed = sum(1 for r in result.runs if not r.ok)
    seeds = ", ".join(str(s) for s in result.seeds)
    methods = sorted({o.method for o in result.oracles.values()})
    target = _target(result.slo_target)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>gpuscale compare report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>gpuscale compare: autoscaling policies against an oracle</h1>",
        (
            f"<p>{len(result.scenarios)} scenario{'s' if len(result.scenarios) != 1 else ''} × "
            f"{len(result.policies)} polic{'ies' if len(result.policies) != 1 else 'y'} × "
            f"{len(result.seeds)} seed{'s' if len(result.seeds) != 1 else ''} ({_e(seeds)}): "
            f"{n_runs} simulations, {n_failed} failed. A policy <em>meets the SLO</em> on a scenario when, "
            f"averaged over seeds, at least {target} of all requests are answered within that scenario's "
            "latency SLO (rejected and timed-out requests count as misses). Every number is a mean over "
            "seeds; the small grey figure under it is the 95 % confidence half-width (Student t), left out "
            "for a single seed or where it rounds to zero. Policies are ranked: those that meet the "
            "SLO first, cheapest first; then the others by SLO attainment; failed runs last. "
            '<span class="star">★</span> marks Pareto-optimal policies: no other policy is at least as '
            "cheap in GPU-hours and at least as good in SLO attainment. GPU-hours are also given as a "
            "multiple of the oracle's." + _cost_note(result) + "</p>"
        ),
        "<h3>The oracle</h3>",
    ]
    if len(methods) == 1:
        parts.append(f'<p class="method">{_e(methods[0])}</p>')
    elif methods:
        parts.append(
            "<p>For each scenario and seed, a clairvoyant oracle finds the fewest replicas over time that "
            "meet the SLO, knowing the future load and the cold-start time: a lower bound on GPU-hours. "
            "How it measured each scenario is given in that scenario's section.</p>"
        )
    else:
        parts.append('<p class="muted">No oracle was computed.</p>')
    parts.append(_references_intro(result))
    used: set[str] = set()
    slugs = {s: _slug(s, used) for s in result.scenarios}
    parts.append(
        "<nav><ul>"
        + "".join(f'<li><a href="#{slugs[s]}">{_e(s)}</a></li>' for s in result.scenarios)
        + "</ul></nav>"
    )
    for scenario in result.scenarios:
        timeline_png, nodes_png, pareto_png, cdf_png = figures[scenario]
        slo = result.slo_ms.get(scenario)
        slo_text = f"SLO: {_plain(slo)} ms" if slo is not None else "SLO: not given"
        seed0 = result.seeds[0] if result.seeds else "–"
        parts += [
            f'<section id="{slugs[scenario]}"><h2>{_e(scenario)}</h2>',
            f"<p>{_e(result.descriptions.get(scenario, ''))}</p>",
            f'<p class="muted">{_e(slo_text)} · target: {_e(target)} of requests within it</p>',
            _oracle_line(result, scenario),
            "" if len(methods) <= 1 else _oracle_methods_html(result, scenario),
            _bound_html(result, scenario),
            _table_html(result, scenario),
            '<p class="muted">Left bar: green meets the SLO target, amber misses it, red failed.</p>',
            f'<p class="verdict">{_e(verdict(result, scenario))}</p>',
            "<h3>Timeline</h3>",
            _figure_html(
                timeline_png,
                f"Timeline of {scenario}",
                f"Seed {seed0}. Top: requests per second arriving. Middle: Ready replicas per policy and "
                "the oracle's schedule (the fewest replicas that meet the SLO, knowing the future load "
                "and the cold-start time). Bottom: p95 latency over each control tick; gaps are ticks "
                "with no completed request.",
            ),
            *_nodes_html(result, scenario, nodes_png),
            "<h3>Cost against SLO attainment</h3>",
            _figure_html(
                pareto_png,
                f"Pareto scatter of {scenario}",
                "Each policy's mean GPU-hours and SLO attainment over seeds with 95 % confidence bars; "
                "the grey line joins the Pareto-optimal policies (★). Dashed: the oracle's GPU-hours, "
                "a lower bound no policy can beat; dotted: the SLO target. The attainment axis is a "
                "logit scale, so each step up adds a nine (90 %, 99 %, 99.9 %); 100 % is drawn at its "
                "top edge."
                + (
                    " Hollow black markers: the simulator-only references (not ranked, never on the "
                    "frontier)."
                    if reference_rows(result, scenario)
                    else ""
                ),
            ),
            "<h3>Latency distribution</h3>",
            _figure_html(
                cdf_png,
                f"Latency CDFs of {scenario}",
                "Latency histograms summed over seeds. Completed requests count at their latency and "
                "timed-out requests at the timeout; rejected requests are not in the histogram. "
                "Dotted: the SLO.",
            ),
            "</section>",
        ]
    parts.append(
        '<p class="muted">Generated by gpuscale from the compare results; summary.csv and summary.json '
        "hold the same numbers.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def report_files(result: CompareResult, workers: int = 1) -> dict[str, str]:
    """The three report files by name: ``report.html``, ``summary.csv`` and ``summary.json``.

    The same ``result`` always gives the same text in each (no timestamps, wall times or paths), with
    its plots drawn here or, ``workers`` > 1, in that many processes.
    """
    return {
        "report.html": _report_html(result, workers),
        "summary.csv": _summary_csv(result),
        "summary.json": _summary_json(result),
    }


# -- the tune report (a multi-objective search) -------------------------------------------------------
def tune_report_html(result: Any) -> str:
    """A ``tune --objectives`` result as one page: every candidate on worst-scenario SLO attainment
    against GPU-hours (or cost), the Pareto front joined, the baseline and the winner marked."""
    other = next(o for o in result.objectives if o != "attainment")
    label = "GPU-hours (summed over scenarios)" if other == "gpu_hours" else "cost, $ (summed over scenarios)"

    def x_of(s: Any) -> float | None:
        v = s.gpu_hours if other == "gpu_hours" else s.cost_usd
        return None if v is None else float(v)

    points = [(s, x_of(s), s.worst_attainment) for s in result.candidates]
    shown = [(s, x, y) for s, x, y in points if x is not None and y is not None]
    front = sorted(((x, y) for s, x, y in shown if s.candidate.label in result.front), key=lambda p: p[0])
    with style_context("default"), mpl.rc_context(_RC):
        fig = _figure(4.2)
        ax = fig.add_subplot()
        others = [(x, y) for s, x, y in shown if s.candidate.label not in result.front]
        if others:
            ax.scatter(
                [x for x, _ in others],
                [y for _, y in others],
                s=18,
                color="#9a9a9a",
                label="candidate",
                zorder=2,
            )
        if front:
            ax.plot(*zip(*front, strict=True), color=_TAB10[0], marker="o", markersize=5, label="Pareto front",
                    zorder=3)  # fmt: skip
        base = next(((x, y) for s, x, y in shown if s.candidate.index == 0), None)
        if base is not None:
            ax.scatter([base[0]], [base[1]], s=70, marker="s", facecolor="none", edgecolor=_REFERENCE,
                       label="baseline (the policy as given)", zorder=4)  # fmt: skip
        win = next(((x, y) for s, x, y in shown if s is result.winner), None)
        if win is not None:
            ax.scatter([win[0]], [win[1]], s=120, marker="*", color=_TAB10[1], label="winner (one objective rule)",
                       zorder=5)  # fmt: skip
        ax.axhline(result.slo_target, color=_REFERENCE, linestyle=":", linewidth=1, label="SLO target")
        ax.set_xlabel(label)
        ax.set_ylabel("worst-scenario SLO attainment")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{100 * v:g} %"))
        ax.set_title(
            f"{result.policy} ({result.kind}): {len(shown)} candidates, {len(result.front)} on the front"
        )
        ax.legend(loc="best")
        png = _png(fig)
    rows = []
    for s, x, y in points:
        if s.candidate.label not in result.front:
            continue
        settings = ", ".join(f"{k}={v}" for k, v in s.candidate.overrides.items()) or "as given"
        rows.append(
            f"<tr><td>{html.escape(s.candidate.label)}</td><td>{html.escape(settings)}</td>"
            f"<td>{'-' if y is None else f'{100 * y:.2f} %'}</td><td>{'-' if x is None else f'{x:.4f}'}</td></tr>"
        )
    title = f"gpuscale tune: {html.escape(result.policy)} on {html.escape(', '.join(result.scenarios))}"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<h1>{title}</h1>"
        f"<p>Seeds {', '.join(map(str, result.seeds))}; objectives: worst-scenario SLO attainment "
        f"(higher is better) and {html.escape(label)} (lower is better). No oracle runs in a tune: the "
        "baseline is the reference.</p>"
        f"<img alt='Pareto front' src='data:image/png;base64,{png}'>"
        "<h2>The Pareto front</h2><table><tr><th>candidate</th><th>settings</th>"
        f"<th>worst SLO attainment</th><th>{html.escape(label)}</th></tr>{''.join(rows)}</table>"
        "</body></html>\n"
    )
