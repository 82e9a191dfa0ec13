"""A run's results: the summary, the per-tick timeline, and writing them without half-written files."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the data planes load Numba: not needed to write or read results
    from gpuscale.sim.dataplane import Records
    from gpuscale.sim.llm_plane import LlmRecords


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One control tick as the timeline records it: ground truth (no pipeline delay) after the tick's
    decision was applied. The fields, in order, are the columns of ``timeline.csv``."""

    time_s: float
    arrivals: int
    """Requests that arrived since the previous row."""
    arrival_rps: float
    completed: int
    timed_out: int
    rejected: int
    dropped: int
    desired: int
    """The active spec after the tick (what the target was asked for)."""
    ready: int
    starting: int
    pending: int
    draining: int
    standby: int
    gpus_held: float
    gpu_util_pct: float | None
    gpu_memory_util_pct: float | None
    cpu_util_pct: float | None
    concurrency: float | None
    queue_length: float | None
    p95_ms: float | None
    gpu_hours: float
    """Pod GPU-hours so far."""
    cost_usd: float
    """Pod GPU-hours so far x GPU price."""
    reason: str
    """The tick's decision reason."""
    nodes: int
    pending_nodes: int
    pending_pod_s: float
    """Pod-seconds spent Pending so far."""
    node_cost_usd: float
    """Node-hours so far x node price."""
    kv_cache_usage: float | None = None
    """LLM pods: KV-cache usage (0-1), mean over Ready pods over the tick."""
    requests_waiting: float | None = None
    """LLM pods: requests waiting to be scheduled, total over pods, mean over the tick's scrapes."""
    ttft_p95_ms: float | None = None
    itl_p95_ms: float | None = None
    """LLM pods: time to first token and inter-token latency, 95th percentile over the tick."""


TIMELINE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(TimelineRow))
"""The columns of ``timeline.csv``: :class:`TimelineRow`'s fields, in order."""

_row_values = attrgetter(*TIMELINE_COLUMNS)


def row_values(row: TimelineRow) -> tuple[Any, ...]:
    """``row``'s values in column order."""
    values: tuple[Any, ...] = _row_values(row)
    return values


@dataclass(frozen=True)
class Summary:
    """Headline figures of one run. Latency quantiles carry the histogram's 0.78 % relative error."""

    scenario: str
    policy: str
    seed: int
    duration_s: float
    slo_ms: float
    requests: int
    completed: int
    rejected: int
    timed_out: int
    dropped: int
    in_flight: int
    slo_attainment: float
    """Fraction of all requests answered within the SLO."""
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    latency_mean_ms: float | None
    queue_wait_p95_ms: float | None
    gpu_hours: float
    cost_usd: float
    mean_replicas: float
    """Time-average of Ready pods."""
    max_replicas: int
    mean_gpus_held: float
    cold_starts: int
    mean_cold_start_s: float | None
    scale_events: int
    mean_gpu_memory_util_pct: float | None
    mean_sm_util_pct: float | None
    mean_cpu_util_pct: float | None
    littles_law_l: float
    """Time-average number of requests in the system."""
    littles_law_lambda_w: float
    """Arrival rate × mean time in the system of requests that ended (Little: equals L)."""
    decisions_by_reason: dict[str, int] = field(default_factory=dict)
    # -- the node layer (appended: older call sites still construct a Summary without them) --------
    cost_basis: str = "pod"
    """What ``cost_usd`` is: "pod" = GPU-hours held by pods x GPU price (fixed pools); "node" =
    node-hours x node price (a node autoscaler is configured: clouds bill nodes)."""
    pod_cost_usd: float = 0.0
    """GPU-hours held by pods x GPU price, whatever the basis."""
    node_hours: float = 0.0
    node_cost_usd: float = 0.0
    """Sum over pools of node-hours x the pool's node price."""
    node_hours_by_pool: dict[str, float] = field(default_factory=dict)
    node_cost_by_pool_usd: dict[str, float] = field(default_factory=dict)
    on_demand_node_cost_usd: float = 0.0
    """The same node-hours at on-demand prices."""
    spot_savings_usd: float = 0.0
    """``on_demand_node_cost_usd - node_cost_usd``."""
    max_nodes: int = 0
    node_scale_ups: int = 0
    node_scale_downs: int = 0
    spot_interruptions: int = 0
    evictions: int = 0
    """Pods evicted by node scale-down or spot reclamation."""
    pending_pod_s: float = 0.0
    """Pod-seconds spent Pending (waiting for a GPU)."""
    oom_kills: int = 0
    """Pods OOM-killed on an over-packed shared GPU (each restarts in place with a cold start)."""
    placeholder_preemptions: int = 0
    """Placeholder pods of the warm-node buffer that lost their place (to a serving pod, or to a node
    being drained, consolidated or reclaimed)."""
    node_group_backoffs: int = 0
    """Cluster Autoscaler node-group backoffs (a rejected launch or a node that never registered)."""
    failed_launches: int = 0
    """Node launches that failed: rejected for want of capacity, or never registered in time."""
    multi_node_consolidations: int = 0
    """Karpenter consolidation commands that took two nodes or more at once."""
    consolidation_replacements: int = 0
    """Cheaper nodes Karpenter's consolidation launched in place of the nodes it removed."""
    node_expirations: int = 0
    """Nodes Karpenter disrupted for reaching expire_after_s."""
    # -- LLM serving (the token-level engine; None/0 for the request-level engine) -------------------
    ttft_slo_ms: float | None = None
    itl_slo_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    """Time to first token of the requests that got one."""
    itl_p50_ms: float | None = None
    itl_p95_ms: float | None = None
    itl_p99_ms: float | None = None
    """Inter-token latency, over every token after a request's first."""
    prompt_tokens: int = 0
    """Prefill tokens computed (recomputation after a preemption included)."""
    generated_tokens: int = 0
    generated_tokens_per_s: float = 0.0
    """Output tokens over the run's duration."""
    preemptions: int = 0
    """Requests preempted for want of KV-cache blocks (each recomputes its tokens)."""
    mean_kv_cache_usage: float | None = None
    """KV-cache blocks in use / blocks, averaged over Ready pod-time (from the scrapes)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Timeline:
    """One row per control tick; columns :data:`TIMELINE_COLUMNS`."""

    rows: list[TimelineRow] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        if name not in TIMELINE_COLUMNS:
            raise ValueError(f"{name!r} is not a timeline column; allowed: {', '.join(TIMELINE_COLUMNS)}")
        values = [getattr(r, name) for r in self.rows]
        if name == "reason":
            return np.array(values, dtype=object)
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(TIMELINE_COLUMNS)
        for r in self.rows:
            w.writerow(["" if v is None else (_fmt(v) if isinstance(v, float) else v) for v in row_values(r)])
        return buf.getvalue()


@dataclass(frozen=True)
class SimResult:
    summary: Summary
    timeline: Timeline
    records: Records | LlmRecords | None = None
    cold_start_phases_s: dict[str, float] = field(default_factory=dict)
    latency_hist: np.ndarray | None = None
    """Counts per latency bucket (``gpuscale.sim.kernel.bucket_values`` gives each bucket's seconds)."""


def _fmt(v: float) -> str:
    if math.isnan(v):
        return ""
    return repr(round(v, 9))


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round(obj, 9)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def summary_json(summary: Summary) -> str:
    return json.dumps(_clean(summary.to_dict()), indent=2, sort_keys=True) + "\n"


def summary_csv(summaries: Sequence[Summary]) -> str:
    # Mappings (decisions by reason, figures by pool) stay in the JSON.
    names = [f.name for f in fields(Summary) if not str(f.type).startswith("dict")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for s in summaries:
        d = s.to_dict()
        w.writerow(["" if d[n] is None else (_fmt(d[n]) if isinstance(d[n], float) else d[n]) for n in names])
    return buf.getvalue()


def write_files_atomically(out_dir: Path, files: Mapping[str, str | bytes]) -> None:
    """Write ``files`` into ``out_dir`` so that a reader sees all of them or none of the new ones.

    Everything goes to a temporary folder beside ``out_dir`` first; only when every file is written
    are they moved into place (one rename each), so a failure part-way leaves ``out_dir`` as it was.
    """
    out_dir = Path(out_dir)
    parent = out_dir.parent if out_dir.parent != Path("") else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    try:
        for name, content in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            dest = out_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def result_files(result: SimResult) -> dict[str, str]:
    files = {"summary.json": summary_json(result.summary), "summary.csv": summary_csv([result.summary])}
    files["timeline.csv"] = result.timeline.to_csv()
    return files
