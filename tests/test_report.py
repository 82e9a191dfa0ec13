"""The compare report: a self-contained HTML page, summary.csv and summary.json, and the verdict.

The results here are synthetic but shaped like real ones: every run's timeline and latency histogram
come from one short real simulation, and its summary is that run's with the figures each test needs
put in (``dataclasses.replace``). Rows, ranks and Pareto flags come from compare's own ``aggregate``,
and every expected value below is computed from the inputs, not written down.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import replace
from statistics import mean
from typing import Any

import numpy as np
import pytest

from gpuscale.experiments.compare import CompareResult, aggregate, estimate
from gpuscale.experiments.oracle import OracleResult
from gpuscale.experiments.report import report_files, verdict
from gpuscale.experiments.runner import TIMELINE_KEEP, RunKey, RunOutcome
from gpuscale.policies.registry import load_preset
from gpuscale.sim.engine import simulate
from gpuscale.sim.results import SimResult
from tests.conftest import make_scenario

TARGET = 0.99
SEEDS = [1, 2]
BROKEN_ERROR = "policy broken: kind = 'nope': unknown policy kind; allowed: hpa, knative"

# (SLO attainment, GPU-hours) per seed, and other summary fields, for each policy on each scenario.
SPIKE: dict[str, dict[str, Any]] = {
    "alpha": {"att": [0.995, 0.997], "gpu": [2.0, 2.2]},
    "beta": {"att": [0.999, 0.9995], "gpu": [3.0, 3.1]},
    "gamma": {"att": [0.90, 0.92], "gpu": [1.5, 1.6]},
    "delta": {"att": [0.40, 0.45], "gpu": [0.5, 0.5], "scale_events": 0, "max_replicas": 1},
    "omega": {"att": [0.99, 0.991], "gpu": [4.0, 4.2]},
}
FLAT: dict[str, dict[str, Any]] = {
    "alpha": {"att": [0.95, 0.96], "gpu": [1.0, 1.1]},
    "beta": {"att": [0.97, 0.975], "gpu": [2.0, 2.0]},
    "gamma": {"att": [0.80, 0.82], "gpu": [0.7, 0.8]},
    "delta": {"att": [0.60, 0.62], "gpu": [0.4, 0.4]},
    "omega": {"att": [0.96, 0.965], "gpu": [3.0, 3.0]},
}
GRID = {"spike": SPIKE, "flat": FLAT}
POLICIES = [*SPIKE, "broken"]
ORACLE_GPU_HOURS = {"spike": 1.25, "flat": 0.5}


@pytest.fixture(scope="module")
def base_run() -> SimResult:
    return simulate(make_scenario(duration_s=60), load_preset("knative"), seed=1)


def _outcome(base: SimResult, scenario: str, policy: str, seed: int, **fields: Any) -> RunOutcome:
    summary = replace(base.summary, scenario=scenario, policy=policy, seed=seed, **fields)
    timeline = {name: base.timeline.column(name) for name in TIMELINE_KEEP}
    return RunOutcome(RunKey(scenario, policy, seed), summary, None, timeline, base.latency_hist)


def _oracle(scenario: str, seed: int, gpu_hours: float, capacity: float = 180.0) -> OracleResult:
    times = np.arange(0.0, 60.0, 10.0)
    return OracleResult(
        scenario, seed, capacity, gpu_hours, gpu_hours * 2.21, times, np.ones_like(times),
        "Clairvoyant: the fewest replicas that meet the SLO, started one cold start ahead.",
    )  # fmt: skip


def _compare(
    base: SimResult, grid: dict[str, dict[str, dict[str, Any]]], failing: bool = True
) -> CompareResult:
    runs: list[RunOutcome] = []
    oracles: dict[tuple[str, int], OracleResult] = {}
    for scenario, policies in grid.items():
        for i, seed in enumerate(SEEDS):
            # A NaN capacity must come out of summary.json as null, not as the invalid token NaN.
            capacity = math.nan if (scenario, seed) == ("flat", 2) else 180.0
            oracles[(scenario, seed)] = _oracle(scenario, seed, ORACLE_GPU_HOURS[scenario], capacity)
            for policy, spec in policies.items():
                extra = {k: v for k, v in spec.items() if k not in ("att", "gpu")}
                runs.append(
                    _outcome(
                        base, scenario, policy, seed,
                        slo_attainment=spec["att"][i], gpu_hours=spec["gpu"][i],
                        cost_usd=spec["gpu"][i] * 2.21, **extra,
                    )
                )  # fmt: skip
            if failing:
                runs.append(RunOutcome(RunKey(scenario, "broken", seed), None, BROKEN_ERROR))
    names = list(next(iter(grid.values())))
    return CompareResult(
        scenarios=list(grid),
        policies=[*names, "broken"] if failing else names,
        seeds=SEEDS,
        slo_target=TARGET,
        runs=runs,
        oracles=oracles,
        rows=aggregate(runs, oracles, TARGET),
        descriptions={s: f"Synthetic {s} traffic: load < capacity & then more." for s in grid},
        slo_ms={s: 100.0 for s in grid},
    )


@pytest.fixture(scope="module")
def result(base_run: SimResult) -> CompareResult:
    return _compare(base_run, GRID)


@pytest.fixture(scope="module")
def files(result: CompareResult) -> dict[str, str]:
    return report_files(result)


def _cheapest_meeting(policies: dict[str, dict[str, Any]]) -> str | None:
    meeting = {p: mean(s["gpu"]) for p, s in policies.items() if mean(s["att"]) >= TARGET}
    return min(meeting, key=lambda p: meeting[p]) if meeting else None


def _table_rows(page: str, scenario: str) -> list[tuple[str, str]]:
    """(row class, policy cell) for each row of ``scenario``'s ranked table, in order."""
    section = page.split(f"<h2>{scenario}</h2>", 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr class="(\w+)"><td class="rank">\d+</td><td class="name">(.*?)</td>', section)


# -- report.html ------------------------------------------------------------------------------------
def test_the_page_is_self_contained_with_embedded_png_plots(files: dict[str, str]) -> None:
    page = files["report.html"]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 * len(GRID)  # timeline, Pareto scatter and latency CDFs per scenario
    for encoded in images:
        png = base64.b64decode(encoded)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert b"Software" not in png  # no matplotlib version stamp in the bytes


def test_the_page_names_every_scenario_policy_and_the_oracle_method(
    files: dict[str, str], result: CompareResult
) -> None:
    page = files["report.html"]
    for scenario in result.scenarios:
        assert f"<h2>{scenario}</h2>" in page
        assert [re.sub(r"<[^>]+>|★", "", cell).strip() for _, cell in _table_rows(page, scenario)] == [
            r.policy for r in result.rows_for(scenario)
        ]
    assert "Clairvoyant: the fewest replicas that meet the SLO" in page
    assert "load &lt; capacity &amp; then more" in page  # text from the data is escaped


def test_pareto_policies_carry_a_star_and_no_other_does(files: dict[str, str], result: CompareResult) -> None:
    for scenario in result.scenarios:
        rows = _table_rows(files["report.html"], scenario)
        assert [("★" in cell) for _, cell in rows] == [r.pareto for r in result.rows_for(scenario)]
        assert any(r.pareto for r in result.rows_for(scenario))


def test_failed_runs_show_as_failed_with_their_error(files: dict[str, str], result: CompareResult) -> None:
    page = files["report.html"]
    for scenario in result.scenarios:
        rows = dict(
            (re.sub(r"<[^>]+>|★", "", cell).strip(), css) for css, cell in _table_rows(page, scenario)
        )
        assert rows["broken"] == "failed"
        failed_row = (
            page.split(f"<h2>{scenario}</h2>", 1)[1].split('<tr class="failed">', 1)[1].split("</tr>")[0]
        )
        assert "failed" in failed_row and "2 of 2 runs" in failed_row
        assert "kind = &#x27;nope&#x27;: unknown policy kind" in failed_row


def test_a_scenario_where_every_run_failed_still_renders(base_run: SimResult) -> None:
    runs = [RunOutcome(RunKey("dead", "broken", s), None, BROKEN_ERROR) for s in SEEDS]
    dead = CompareResult(["dead"], ["broken"], SEEDS, TARGET, runs, {}, aggregate(runs, {}, TARGET))
    page = report_files(dead)["report.html"]
    assert "data:image/png" not in page and "no data (every run failed)" in page
    assert "No oracle was computed" in page
    assert verdict(dead, "dead").startswith("Every run failed")


def test_a_scenario_whose_requests_all_share_one_latency_bucket_still_renders(base_run: SimResult) -> None:
    # One request in the whole run (the fuzzer found it: a 1-row trace): the tail plot, on a log scale,
    # has no point above the one bucket, and matplotlib refuses a log axis with no range
    one = np.zeros_like(np.asarray(base_run.latency_hist))
    one[100] = 1
    runs = [
        replace(_outcome(base_run, "one", "alpha", s, slo_attainment=1.0, gpu_hours=0.1), latency_hist=one)
        for s in SEEDS
    ]
    oracles = {("one", s): _oracle("one", s, 0.1) for s in SEEDS}
    single = CompareResult(
        ["one"],
        ["alpha"],
        SEEDS,
        TARGET,
        runs,
        oracles,
        aggregate(runs, oracles, TARGET),
        slo_ms={"one": 100.0},
    )
    page = report_files(single)["report.html"]
    assert page.count("data:image/png") >= 2  # the timeline and the CDF at least


# -- summary.json and summary.csv -------------------------------------------------------------------
def _no_nan(token: str) -> float:
    raise AssertionError(f"summary.json holds {token}")


def test_summary_json_holds_the_aggregates_the_runs_and_the_oracle(
    files: dict[str, str], result: CompareResult
) -> None:
    doc = json.loads(files["summary.json"], parse_constant=_no_nan)
    assert doc["seeds"] == SEEDS and doc["slo_target"] == TARGET and doc["policies"] == POLICIES
    for scenario, policies in GRID.items():
        entry = doc["scenarios"][scenario]
        assert entry["slo_ms"] == 100.0 and "Synthetic" in entry["description"]
        assert entry["oracle"]["1"]["gpu_hours"] == ORACLE_GPU_HOURS[scenario]
        assert "Clairvoyant" in entry["oracle"]["1"]["method"]
        ranked = sorted(entry["policies"], key=lambda p: entry["policies"][p]["rank"])
        assert ranked == [r.policy for r in result.rows_for(scenario)]
        for policy, spec in policies.items():
            got = entry["policies"][policy]
            assert got["estimates"]["gpu_hours"]["mean"] == pytest.approx(mean(spec["gpu"]))
            assert got["estimates"]["slo_attainment"]["mean"] == pytest.approx(mean(spec["att"]))
            assert got["estimates"]["slo_attainment"]["n"] == len(SEEDS)
            assert got["estimates"]["gpu_hours"]["half_width"] == pytest.approx(
                estimate(spec["gpu"]).half_width
            )
            assert got["gpu_hours_x_oracle"]["mean"] == pytest.approx(
                mean(spec["gpu"]) / ORACLE_GPU_HOURS[scenario]
            )
            assert got["meets_slo"] == (mean(spec["att"]) >= TARGET)
            assert got["runs"]["2"]["summary"]["gpu_hours"] == spec["gpu"][1]
            assert got["runs"]["2"]["summary"]["seed"] == 2
        broken = entry["policies"]["broken"]
        assert broken["failed"] == 2 and broken["errors"] == [BROKEN_ERROR]
        assert broken["estimates"]["gpu_hours"] == {"mean": None, "half_width": 0.0, "n": 0}
        assert broken["runs"]["1"] == {"summary": None, "error": BROKEN_ERROR}
    assert doc["scenarios"]["flat"]["oracle"]["2"]["capacity_rps_per_replica"] is None
    assert "wall" not in files["summary.json"]


def test_summary_csv_has_one_row_per_scenario_and_policy(
    files: dict[str, str], result: CompareResult
) -> None:
    rows = list(csv.DictReader(io.StringIO(files["summary.csv"])))
    # Scenarios in the order they were asked for (as in the report), each one's policies as ranked.
    expected = [(r.scenario, r.policy) for scenario in result.scenarios for r in result.rows_for(scenario)]
    assert [(r["scenario"], r["policy"]) for r in rows] == expected
    by_key = {(r["scenario"], r["policy"]): r for r in rows}
    for scenario, policies in GRID.items():
        pareto = {r.policy: r.pareto for r in result.rows_for(scenario)}
        for policy, spec in policies.items():
            row = by_key[(scenario, policy)]
            assert float(row["gpu_hours_mean"]) == pytest.approx(mean(spec["gpu"]))
            assert float(row["slo_attainment_mean"]) == pytest.approx(mean(spec["att"]))
            assert float(row["gpu_hours_ci95"]) == pytest.approx(estimate(spec["gpu"]).half_width)
            assert float(row["gpu_hours_x_oracle_mean"]) == pytest.approx(
                mean(spec["gpu"]) / ORACLE_GPU_HOURS[scenario]
            )
            assert row["meets_slo"] == ("true" if mean(spec["att"]) >= TARGET else "false")
            assert row["pareto"] == ("true" if pareto[policy] else "false")
            assert row["failed"] == "0"
        broken = by_key[(scenario, "broken")]
        assert broken["failed"] == "2" and broken["errors"] == BROKEN_ERROR
        assert broken["gpu_hours_mean"] == "" and broken["latency_p95_ms_ci95"] == ""


def test_the_same_result_gives_the_same_bytes(base_run: SimResult, files: dict[str, str]) -> None:
    again = report_files(_compare(base_run, GRID))
    assert set(again) == {"report.html", "summary.csv", "summary.json"}
    for name, text in files.items():
        assert again[name].encode() == text.encode(), name


def test_plots_drawn_in_worker_processes_are_the_same_bytes(
    result: CompareResult, files: dict[str, str]
) -> None:
    assert len(result.scenarios) > 1  # so the figures really are spread over the workers
    assert report_files(result, workers=2) == files


# -- the verdict ------------------------------------------------------------------------------------
def _sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?:\s|$)", text))


def test_the_verdict_names_the_cheapest_policy_that_meets_the_slo(result: CompareResult) -> None:
    text = verdict(result, "spike")
    cheapest = _cheapest_meeting(SPIKE)
    assert cheapest is not None
    assert text.startswith(f"{cheapest} is the cheapest policy that meets the 100 ms SLO")
    assert f"{mean(SPIKE[cheapest]['gpu']):.2f} GPU-hours" in text
    # The cheaper Pareto alternative is named with how much cheaper it is.
    gamma_saving = 1 - mean(SPIKE["gamma"]["gpu"]) / mean(SPIKE[cheapest]["gpu"])
    assert f"gamma is {gamma_saving * 100:.0f} % cheaper" in text
    assert 2 <= _sentences(text) <= 4


def test_the_verdict_names_the_worst_policy_and_the_failed_runs(result: CompareResult) -> None:
    text = verdict(result, "spike")
    worst = min(SPIKE, key=lambda p: mean(SPIKE[p]["att"]))
    assert f"{worst} never scaled (1 replica throughout)" in text
    assert f"missed the SLO for {(1 - mean(SPIKE[worst]['att'])) * 100:.1f} % of requests" in text
    assert "broken (2 of 2 runs" in text and "unknown policy kind" in text


def test_the_verdict_says_when_no_policy_met_the_slo(result: CompareResult) -> None:
    assert _cheapest_meeting(FLAT) is None
    text = verdict(result, "flat")
    best = max(FLAT, key=lambda p: mean(FLAT[p]["att"]))
    assert text.startswith(f"No policy met the 100 ms SLO for 99 % of requests; the best, {best},")
    assert 2 <= _sentences(text) <= 4


def test_the_verdict_on_a_clean_run_has_no_failure_sentence(base_run: SimResult) -> None:
    clean = _compare(base_run, {"spike": SPIKE}, failing=False)
    text = verdict(clean, "spike")
    assert "Failed" not in text and "broken" not in text
    assert 2 <= _sentences(text) <= 4


def test_the_verdict_is_generated_from_the_data_not_from_names(base_run: SimResult) -> None:
    renamed: Callable[[str], str] = lambda p: f"policy-{p[::-1]}"  # noqa: E731
    grid = {"spike": {renamed(p): spec for p, spec in SPIKE.items()}}
    text = verdict(_compare(base_run, grid, failing=False), "spike")
    cheapest = _cheapest_meeting(SPIKE)
    assert cheapest is not None and text.startswith(f"{renamed(cheapest)} is the cheapest")


# -- the node layer -----------------------------------------------------------------------------------
SPOT, ON_DEMAND = "a100-spot", "a100-on-demand"
# Per seed: dollars by pool; each policy's node-hours are its dollars at 0.66 (spot) and 2.21 $/h.
NODES: dict[str, dict[str, Any]] = {
    "alpha": {"att": [0.995, 0.996], "gpu": [2.0, 2.4], "pools": [(1.32, 2.21), (1.98, 0.0)]},
    "beta": {"att": [0.999, 0.999], "gpu": [3.0, 3.0], "pools": [(0.66, 4.42), (0.66, 6.63)]},
    "gamma": {"att": [0.90, 0.93], "gpu": [1.0, 1.2], "pools": [(0.66, 0.0), (1.32, 0.0)]},
}
PRICES = {SPOT: 0.66, ON_DEMAND: 2.21}


@pytest.fixture(scope="module")
def node_run() -> SimResult:
    pools = [
        {"name": SPOT, "gpu": "a100-80gb", "nodes": 1, "max_nodes": 3, "capacity_type": "spot",
         "usd_per_node_hour": PRICES[SPOT]},
        {"name": ON_DEMAND, "gpu": "a100-80gb", "nodes": 0, "max_nodes": 3},
    ]  # fmt: skip
    sc = make_scenario(
        duration_s=300,
        cluster={"pools": pools, "node_autoscaler": {"kind": "cluster-autoscaler"}},
        workload={"kind": "poisson", "rate": {"kind": "step", "levels": [[0, 200], [60, 6000]]}},
    )
    return simulate(sc, load_preset("knative"), seed=1)


def _node_compare(base: SimResult, nodes: SimResult) -> CompareResult:
    """The spike scenario on fixed pools beside a "spot" scenario whose nodes come and go."""
    flat = _compare(base, {"spike": SPIKE}, failing=False)
    runs = list(flat.runs)
    oracles = dict(flat.oracles)
    for i, seed in enumerate(SEEDS):
        oracles[("spot", seed)] = _oracle("spot", seed, 0.8)
        for policy, spec in NODES.items():
            dollars = dict(zip((SPOT, ON_DEMAND), spec["pools"][i], strict=True))
            hours = {pool: usd / PRICES[pool] for pool, usd in dollars.items()}
            summary = replace(
                nodes.summary, scenario="spot", policy=policy, seed=seed,
                slo_attainment=spec["att"][i], gpu_hours=spec["gpu"][i], cost_usd=sum(dollars.values()),
                cost_basis="node", node_cost_usd=sum(dollars.values()), node_cost_by_pool_usd=dollars,
                node_hours=sum(hours.values()), node_hours_by_pool=hours,
                spot_savings_usd=hours[SPOT] * (PRICES[ON_DEMAND] - PRICES[SPOT]),
            )  # fmt: skip
            timeline = {name: nodes.timeline.column(name) for name in TIMELINE_KEEP}
            runs.append(RunOutcome(RunKey("spot", policy, seed), summary, None, timeline, nodes.latency_hist))
    runs.sort(key=lambda r: r.key)
    return CompareResult(
        scenarios=["spike", "spot"],
        policies=list(SPIKE),
        seeds=SEEDS,
        slo_target=TARGET,
        runs=runs,
        oracles=oracles,
        rows=aggregate(runs, oracles, TARGET),
        descriptions={"spike": "Fixed pools.", "spot": "Spot first, on demand behind it."},
        slo_ms={"spike": 100.0, "spot": 100.0},
        node_layer={"spike": False, "spot": True},
        spot={"spike": False, "spot": True},
    )


@pytest.fixture(scope="module")
def node_result(base_run: SimResult, node_run: SimResult) -> CompareResult:
    return _node_compare(base_run, node_run)


def _mean_pool(policy: str, pool: str) -> float:
    return mean(dict(zip((SPOT, ON_DEMAND), seed, strict=True))[pool] for seed in NODES[policy]["pools"])


def _section(page: str, scenario: str) -> str:
    return page.split(f"<h2>{scenario}</h2>", 1)[1].split("</section>", 1)[0]


def test_a_scenario_with_a_node_layer_gets_its_nodes_plot_and_dollars_by_pool(
    node_result: CompareResult, node_run: SimResult
) -> None:
    assert max(node_run.timeline.column("nodes")) > 1  # the spike made the node autoscaler add nodes
    page = report_files(node_result)["report.html"]
    spot, fixed = _section(page, "spot"), _section(page, "spike")
    assert len(re.findall(r'<img src="data:image/png', spot)) == 4  # + nodes over time
    assert len(re.findall(r'<img src="data:image/png', fixed)) == 3
    assert "Nodes and dollars by pool" in spot and "Nodes and dollars by pool" not in fixed
    # Node columns only where nodes move.
    assert "<th>Node-hours</th>" in spot and "<th>Node-hours</th>" not in fixed
    table = spot.split("Nodes and dollars by pool", 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<th>\$ ([^<]+)</th>", table) == [SPOT, ON_DEMAND]  # the cluster's order
    assert "<th>Spot savings ($)</th>" in table
    for policy in NODES:
        row = table.split(f'<td class="name">{policy}</td>', 1)[1].split("</tr>", 1)[0]
        cells = re.findall(r"<td>([^<]*)", row)
        assert cells[:2] == [f"{_mean_pool(policy, SPOT):,.2f}", f"{_mean_pool(policy, ON_DEMAND):,.2f}"]
        total = mean(sum(seed) for seed in NODES[policy]["pools"])
        assert cells[2] == f"{total:,.2f}"


def test_summaries_hold_dollars_by_pool_and_spot_savings_only_where_there_is_spot(
    node_result: CompareResult,
) -> None:
    files = report_files(node_result)
    doc = json.loads(files["summary.json"], parse_constant=_no_nan)
    spot, fixed = doc["scenarios"]["spot"], doc["scenarios"]["spike"]
    assert (spot["node_layer"], spot["spot"], spot["pools"]) == (True, True, [SPOT, ON_DEMAND])
    assert (fixed["node_layer"], fixed["spot"]) == (False, False)
    for policy, spec in NODES.items():
        got = spot["policies"][policy]
        for pool in (SPOT, ON_DEMAND):
            est = got["by_pool"]["node_cost_by_pool_usd"][pool]
            values = [dict(zip((SPOT, ON_DEMAND), seed, strict=True))[pool] for seed in spec["pools"]]
            assert est["mean"] == pytest.approx(mean(values))
            assert est["half_width"] == pytest.approx(estimate(values).half_width)
            assert got["by_pool"]["node_hours_by_pool"][pool]["mean"] == pytest.approx(
                mean(values) / PRICES[pool]
            )
        assert got["estimates"]["spot_savings_usd"]["mean"] > 0
    assert "spot_savings_usd" not in fixed["policies"]["alpha"]["estimates"]
    assert "node_hours" in fixed["policies"]["alpha"]["estimates"]

    rows = list(csv.DictReader(io.StringIO(files["summary.csv"])))
    header = list(rows[0])
    pool_columns = [h for h in header if h.startswith("node_cost_usd[") and h.endswith("_mean")]
    fixed_pool = next(iter(node_result.pools("spike")))
    # One column per pool name, each scenario's pools in its cluster's order, scenarios as asked for.
    assert pool_columns == [f"node_cost_usd[{p}]_mean" for p in (fixed_pool, SPOT, ON_DEMAND)]
    for row in rows:
        if row["scenario"] == "spot":
            assert float(row[f"node_cost_usd[{SPOT}]_mean"]) == pytest.approx(_mean_pool(row["policy"], SPOT))
            assert float(row["spot_savings_usd_mean"]) > 0
            assert row[f"node_cost_usd[{fixed_pool}]_mean"] == ""
        else:
            assert float(row[f"node_cost_usd[{fixed_pool}]_mean"]) == pytest.approx(
                float(row["node_cost_usd_mean"])
            )
            assert row[f"node_cost_usd[{SPOT}]_mean"] == "" and row["spot_savings_usd_mean"] == ""
    again = report_files(_node_compare_again(node_result))
    assert again["summary.json"] == files["summary.json"] and again["summary.csv"] == files["summary.csv"]


def _node_compare_again(result: CompareResult) -> CompareResult:
    """The same runs re-aggregated: the same bytes must come out."""
    return replace(result, rows=aggregate(result.runs, result.oracles, TARGET))


def test_the_terminal_table_adds_node_hours_and_dollars_where_a_scenario_has_nodes(
    node_result: CompareResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    import gpuscale.cli as cli

    for width in (80, 120):
        screen = Console(width=width, file=io.StringIO(), force_terminal=True, color_system=None)
        monkeypatch.setattr(cli, "out", screen)
        tables = cli.compare_tables(node_result)
        headers = {str(t.title).split(" · ")[0]: [str(c.header) for c in t.columns] for t in tables}
        assert {"node-h", "$"} <= set(headers["spot"])
        assert "node-h" not in headers["spike"]  # fixed pools: nothing to show
        for table in tables:
            screen.print(table)
        text = screen.file.getvalue()  # type: ignore[attr-defined]
        assert max(len(line) for line in text.splitlines()) <= width
        for policy in NODES:  # the names stay readable
            assert f" {policy} " in text
