"""Ray's overhead on a compare: the same suite on local worker processes and on a two-node Ray cluster
on 127.0.0.1, back to back in one process, repeated; prints the wall times, where they went and the
ratio (printed, never asserted). Checks that both give the same report bytes.

    .venv/bin/python scripts/bench_ray.py                      # the default compare, 2 repeats
    .venv/bin/python scripts/bench_ray.py --scenarios thesis-constant,flash-crowd --repeats 3

The cluster is a head and a second node, one CPU each (Ray's ``cluster_utils.Cluster``), so Ray gets
the same two cores as the two local workers. Phases: ``oracle`` (one oracle per scenario and seed),
``runs`` (the policy grid); ``busy`` is the sum of the jobs' own wall times (how long the
simulations took where they ran), so ``2 x wall - busy`` is time the two cores spent on anything else
(Ray's processes, scheduling, start-up, the tail of the last jobs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def _descendants_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every live process below this one: pid -> (name, s)."""
    parent: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        exe = cmd[0].decode(errors="replace")
        name = exe if exe.startswith("ray::") else Path(exe).name
        if name.startswith("python") and len(cmd) > 1:  # Ray's agents and monitors are python scripts
            name = next((Path(c.decode()).name for c in cmd[1:] if c.endswith(b".py")), name)
        stats[pid] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    me = os.getpid()
    out = {}
    for pid, value in stats.items():
        up = parent.get(pid)
        while up is not None and up not in (me, 0, 1):
            up = parent.get(up)
        if up == me:
            out[pid] = value
    return out


class _CpuSampler:
    """Samples :func:`_descendants_cpu` every half second in a thread, so a process that ends during
    the run (Ray's workers end with their job) still counts, to within half a second."""

    def __init__(self) -> None:
        self.before = _descendants_cpu()
        self.last: dict[int, tuple[str, float]] = dict(self.before)
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def _sample(self) -> None:
        for pid, value in _descendants_cpu().items():
            self.last[pid] = value

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return _cpu_by_part(self.before, self.last)


def _cpu_by_part(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between the two samples, by process name (Ray's workers together)."""
    parts: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        key = "workers" if name.startswith("ray::") else name
        parts[key] = parts.get(key, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return {k: v for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def _noop(i: int) -> int:
    return i


def _timed_compare(suite: Any, pool: Any) -> tuple[dict[str, float], dict[str, bytes]]:
    from gpuscale.experiments.compare import run_compare
    from gpuscale.experiments.report import report_files

    marks: dict[str, float] = {}
    start = time.perf_counter()

    def progress(phase: str, done: int, total: int) -> None:
        if done == total:
            marks[phase] = time.perf_counter() - start

    result = run_compare(suite, workers=2, progress=progress, pool=pool)
    wall = time.perf_counter() - start
    busy = sum(run.wall_s for run in result.runs)
    figures = {
        "wall_s": wall,
        "oracle_s": marks.get("oracle", 0.0),
        "runs_s": wall - marks.get("oracle", 0.0),
        "busy_s": busy,
    }
    return figures, report_files(result)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", help="comma-separated (default: the built-in suite)")
    parser.add_argument("--policies", help="comma-separated (default: the built-in suite)")
    parser.add_argument("--seeds", help="comma-separated (default 1,2,3)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="gs-bench-ray-", dir="/tmp"))
    os.environ["HOME"] = str(base)  # Ray's auth token
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1
    from ray.cluster_utils import Cluster

    from gpuscale.experiments.ray_runner import RayPool
    from gpuscale.experiments.suite import SuiteConfig, parse_seeds, split_list

    update: dict[str, Any] = {}
    if args.scenarios:
        update["scenarios"] = split_list(args.scenarios, "--scenarios")
    if args.policies:
        update["policies"] = split_list(args.policies, "--policies")
    if args.seeds:
        update["seeds"] = parse_seeds(args.seeds)
    suite = SuiteConfig().model_copy(update=update)
    jobs = len(suite.scenarios) * len(suite.seeds) * (len(suite.policies) + 1)
    print(f"{len(suite.scenarios)} scenarios x {len(suite.policies)} policies x {len(suite.seeds)} seeds: "
          f"{jobs} jobs (oracles included)", flush=True)  # fmt: skip

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": str(base / "s")},
    )
    try:
        cluster.add_node(num_cpus=1)
        with RayPool(cluster.address) as pool:
            list(pool.imap_unordered(_noop, range(20)))  # the workers started
            start = time.perf_counter()
            n = len(list(pool.imap_unordered(_noop, range(500))))
            per_task_ms = 1000 * (time.perf_counter() - start) / n
        print(
            f"Ray's own cost of a task (500 no-op tasks through RayPool): {per_task_ms:.2f} ms each",
            flush=True,
        )
        rows: list[tuple[str, dict[str, float]]] = []
        reference: dict[str, bytes] | None = None
        for rep in range(args.repeats):
            for where in ("local", "ray"):
                own, sampler = os.times(), _CpuSampler()
                if where == "local":
                    figures, files = _timed_compare(suite, None)
                else:
                    start = time.perf_counter()
                    with RayPool(cluster.address) as pool:
                        joined = time.perf_counter() - start
                        figures, files = _timed_compare(suite, pool)
                    figures["join_s"] = joined
                    figures["wall_s"] += joined
                end = os.times()
                # this process, and its local workers (reaped: their times are the children's)
                figures["cpu_driver_s"] = end.user + end.system - own.user - own.system
                figures["cpu_local_workers_s"] = (
                    end.children_user + end.children_system - own.children_user - own.children_system
                )
                cpu = sampler.stop()
                if where == "ray":
                    print("  Ray CPU s by process: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
                reference = reference or files
                if files != reference:
                    print("MISMATCH: the report bytes differ", file=sys.stderr)
                    sys.exit(1)
                rows.append((where, figures))
                print(f"repeat {rep + 1} {where:5}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                      flush=True)  # fmt: skip
            local, ray = rows[-2][1], rows[-1][1]
            print(f"repeat {rep + 1}: Ray / local = {ray['wall_s'] / local['wall_s']:.3f}", flush=True)
        for name in ("local", "ray"):
            walls = sorted(f["wall_s"] for w, f in rows if w == name)
            print(f"{name}: wall {', '.join(f'{w:.1f}' for w in walls)} s")
        ratios = [rows[i + 1][1]["wall_s"] / rows[i][1]["wall_s"] for i in range(0, len(rows), 2)]
        print(f"Ray / local per repeat: {', '.join(f'{r:.3f}' for r in ratios)}; same report bytes: yes")
    finally:
        cluster.shutdown()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
