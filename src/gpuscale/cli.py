"""The ``gpuscale`` command line: the only place that prints, reads files for the user, or exits.

Bad input of any kind ends in one clear message on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from gpuscale._core.errors import MISSING, ConfigError, GpuscaleError
from gpuscale.config.profiles import BUILTIN_PROFILES, GPU_TYPES
from gpuscale.config.scenario import SAFE_NAME_ALLOWED, is_safe_name
from gpuscale.experiments.catalog import DEFAULT_SCENARIO, builtin_scenario, resolve_scenario, scenario_names
from gpuscale.policies.base import Policy, StaticPolicy
from gpuscale.sim.results import SimResult, Summary, result_files, write_files_atomically

app = typer.Typer(
    name="gpuscale",
    help=(
        "Simulate, compare and run autoscaling for GPU inference services on Kubernetes.\n\n"
        "Start with `gpuscale simulate` (the default scenario under a fixed number of replicas), "
        "`gpuscale scenarios list` and `gpuscale policies list`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
scenarios_app = typer.Typer(help="The built-in scenario catalog.", no_args_is_help=True)
profiles_app = typer.Typer(
    help="Built-in model profiles (how a pod serves) and GPU types.", no_args_is_help=True
)
policies_app = typer.Typer(help="Autoscaling policy kinds and ready-made presets.", no_args_is_help=True)
app.add_typer(scenarios_app, name="scenarios")
app.add_typer(profiles_app, name="profiles")
app.add_typer(policies_app, name="policies")

out = Console()
err = Console(stderr=True)


def fail(message: str) -> NoReturn:
    # The message is the user's text and ours, never markup: "[low, high]" must print as written.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)
    raise typer.Exit(2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn gpuscale's own input errors into one message and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        fail(str(exc))
    except GpuscaleError as exc:
        fail(str(exc))


def _check_out(path: Path, *, folder: bool, option: str = "--out") -> None:
    """Fail (exit 2, before any work) unless the command can write its output at ``path``: a folder
    (simulate, compare, tune) or a file (manifests, import). Nothing is left behind by the check."""

    def refuse(why: str) -> NoReturn:
        what = "a folder to write the results into" if folder else "a file to write"
        fail(str(ConfigError(option, None, str(path), f"{why}; expected {what}")))

    try:
        exists = path.exists()
        if exists and folder and not path.is_dir():
            refuse("is a file")
        if exists and not folder and path.is_dir():
            refuse("is a folder")
        existing = path if exists else next((p for p in path.parents if p.exists()), None)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        refuse(f"cannot be checked ({getattr(exc, 'strerror', None) or exc})")
    if existing is None:
        refuse("cannot be created: none of the folders above it exists")
    if not exists and not existing.is_dir():
        refuse(f"cannot be created: {existing} is a file")
    # the output goes to a temporary file or folder beside it, then is renamed into place
    probes = [existing] if not exists else [path.parent, path] if folder else [path.parent]
    for where in probes:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".gpuscale-check-", dir=where))
        except OSError as exc:
            refuse(f"cannot be written: creating anything in {where} fails ({exc.strerror or exc})")


def _out_path(text: str | Path) -> Path:
    """``--out``'s parser: an empty value would be the current folder (``Path('')`` is ``.``)."""
    if isinstance(text, Path):  # a default
        return text
    if not text.strip():
        raise typer.BadParameter("is empty; expected a path")
    if "\x00" in text:
        raise typer.BadParameter("contains a NUL byte, which no path can hold")
    return Path(text)


def _out_folder(value: Path | None) -> Path | None:
    """The ``--out`` callback of commands that write a folder of results."""
    if value is not None:
        _check_out(value, folder=True)
    return value


def _out_file(value: Path | None) -> Path | None:
    """The ``--out`` callback of commands that write one file."""
    if value is not None:
        _check_out(value, folder=False)
    return value


def _namespace(value: str | None) -> str | None:
    """The ``--namespace`` callback: a Kubernetes namespace is a DNS-1123 label."""
    if value is None:
        return value
    from gpuscale.controller.config import NAMESPACE_ALLOWED, is_namespace

    if not is_namespace(value):
        fail(
            str(
                ConfigError(
                    "--namespace",
                    None,
                    value,
                    f"not a Kubernetes namespace; a namespace is {NAMESPACE_ALLOWED}",
                )
            )
        )
    return value


class _LazyProgress:
    """A progress bar that appears only once a run has taken more than ``after_s`` seconds."""

    def __init__(self, label: str, after_s: float = 2.0) -> None:
        self.label = label
        self.after_s = after_s
        self.start = time.monotonic()  # noqa: TID251 - the CLI is the edge where the clock lives
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, fraction: float) -> None:
        if self.bar is None:
            if time.monotonic() - self.start < self.after_s:  # noqa: TID251
                return
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=1.0)
        self.bar.update(self.task, completed=fraction)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _load_policy(spec: str | None, replicas: int | None, default_replicas: int) -> Policy[Any]:
    if spec is None:
        return StaticPolicy(replicas if replicas is not None else default_replicas)
    if replicas is not None:
        fail("give either --policy or --replicas, not both")
    from gpuscale.policies import registry

    return registry.resolve_policy(spec, key=None, source="--policy").build()


def _fmt(v: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if v is None else f"{v:,.{digits}f}{unit}"


def summary_table(s: Summary) -> Table:
    t = Table(title=f"{s.scenario} · {s.policy} · seed {s.seed}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    rows: list[tuple[str, str]] = [
        ("requests", f"{s.requests:,}"),
        ("completed / timed out / rejected / dropped", f"{s.completed:,} / {s.timed_out:,} / {s.rejected:,} / {s.dropped:,}"),
        (f"SLO attainment ({_slo_words(s)})", f"{100 * s.slo_attainment:.2f} %"),
        ("latency p50 / p95 / p99", f"{_fmt(s.latency_p50_ms)} / {_fmt(s.latency_p95_ms)} / {_fmt(s.latency_p99_ms)} ms"),
        ("GPU-hours / cost", f"{s.gpu_hours:,.2f} / ${s.cost_usd:,.2f}"),
        ("replicas mean / max", f"{s.mean_replicas:.2f} / {s.max_replicas}"),
        ("cold starts (mean time to Ready)", f"{s.cold_starts} ({_fmt(s.mean_cold_start_s, 0, ' s')})"),
        ("scale events", str(s.scale_events)),
        ("mean SM / GPU memory / CPU utilization", f"{_fmt(s.mean_sm_util_pct)} / {_fmt(s.mean_gpu_memory_util_pct)} / {_fmt(s.mean_cpu_util_pct)} %"),
    ]  # fmt: skip
    if s.generated_tokens:
        rows[4:4] = [
            ("time to first token p50 / p95 / p99", f"{_fmt(s.ttft_p50_ms)} / {_fmt(s.ttft_p95_ms)} / {_fmt(s.ttft_p99_ms)} ms"),
            ("inter-token latency p50 / p95 / p99", f"{_fmt(s.itl_p50_ms, 2)} / {_fmt(s.itl_p95_ms, 2)} / {_fmt(s.itl_p99_ms, 2)} ms"),
            ("tokens generated (per s) / prompt tokens", f"{s.generated_tokens:,} ({s.generated_tokens_per_s:,.0f}) / {s.prompt_tokens:,}"),
            ("preemptions / mean KV-cache usage", f"{s.preemptions:,} / {_fmt(None if s.mean_kv_cache_usage is None else 100 * s.mean_kv_cache_usage)} %"),
        ]  # fmt: skip
    for k, v in rows:
        t.add_row(k, v)
    return t


def _slo_words(s: Summary) -> str:
    """The SLO a request must meet: end-to-end, and for LLM serving TTFT and inter-token latency."""
    parts = [f"≤ {s.slo_ms:g} ms"]
    if s.ttft_slo_ms is not None:
        parts.append(f"TTFT ≤ {s.ttft_slo_ms:g} ms")
    if s.itl_slo_ms is not None:
        parts.append(f"ITL ≤ {s.itl_slo_ms:g} ms")
    return ", ".join(parts)


@app.command()
def simulate(
    scenario: Annotated[
        str,
        typer.Argument(
            help="A built-in scenario name (see `gpuscale scenarios list`) or a scenario YAML file."
        ),
    ] = DEFAULT_SCENARIO,
    policy: Annotated[
        str | None,
        typer.Option("--policy", "-p", help="A policy YAML file or preset name (`gpuscale policies list`)."),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(min=0, help="Without --policy: hold this many replicas (default: the scenario's)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Root seed (default: the scenario's).")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for summary.json, summary.csv and timeline.csv.",
            callback=_out_folder,
            parser=_out_path,
        ),
    ] = None,
) -> None:
    """Run one policy on one scenario and print its summary; files go to --out (default out/SCENARIO-POLICY)."""
    with user_errors():
        ref = resolve_scenario(scenario)
        pol = _load_policy(policy, replicas, ref.scenario.control.initial_replicas)
        target = out_dir if out_dir is not None else Path("out") / f"{ref.scenario.name}-{pol.name}"
        if out_dir is None:
            if not is_safe_name(pol.name):
                raise ConfigError(
                    policy or "--policy",
                    "name",
                    pol.name,
                    f"cannot be part of the output folder's name; allowed: {SAFE_NAME_ALLOWED}; or give --out",
                )
            _check_out(target, folder=True)
        from gpuscale.sim.engine import simulate as run

        progress = _LazyProgress(f"{ref.scenario.name} · {pol.name}")
        start = time.perf_counter()
        try:
            result: SimResult = run(
                ref.scenario, pol, seed=seed, base_dir=ref.base_dir, source=ref.source, progress=progress
            )
        finally:
            progress.close()
        wall = time.perf_counter() - start
        write_files_atomically(target, result_files(result))
    out.print(summary_table(result.summary))
    s = result.summary
    out.print(
        f"{s.requests:,} requests simulated in {wall:.2f} s ({s.requests / max(wall, 1e-9) / 1e6:.2f} M/s); "
        f"results in {target}/"
    )


def _ci(e: Any, digits: int, scale: float, with_interval: bool) -> str:
    """An Estimate as ``mean ± 95 % half-width`` (the interval only when asked and not zero)."""
    if e.mean is None:
        return "-"
    text = f"{e.mean * scale:,.{digits}f}"
    if with_interval and e.n > 1 and e.half_width * scale >= 0.5 * 10**-digits:
        text += f" ± {e.half_width * scale:,.{digits}f}"
    return text


def compare_tables(result: Any) -> list[Table]:
    """One ranked table per scenario (means over seeds; the report has the confidence intervals).

    A scenario with a node layer adds node-hours and its dollars (the node bill) to the headline
    columns; a terminal under 100 columns then drops p99 to keep the policy names readable. A narrow
    terminal gets the headline columns only; report.html has everything. Into a pipe or a file
    (nothing folds lines there) every column goes, at full width.
    """
    tables = []
    width = out.size.width if out.is_terminal else 100_000
    wide = width >= 150
    for scenario in result.scenarios:
        oracle = [o for (name, _), o in result.oracles.items() if name == scenario]
        o_gpu = sum(o.gpu_hours for o in oracle) / len(oracle) if oracle else None
        cap = oracle[0].capacity_rps_per_replica if oracle else None
        t = Table(
            title=f"{scenario} · SLO {result.slo_ms.get(scenario, 0):g} ms for {100 * result.slo_target:g} % of requests"
            f" · oracle {_fmt(o_gpu, 2)} GPU-h ({_fmt(cap, 0)} req/s per replica) · ★ Pareto-optimal",
            title_justify="left",
        )
        nodes = result.has_node_layer(scenario)
        # LLM serving: time to first token and inter-token latency say more than end-to-end latency
        llm = any(row.estimates["ttft_p95_ms"].mean is not None for row in result.rows_for(scenario))
        columns = (
            "",
            "policy",
            "SLO %",
            "TTFT p95" if llm else "p95 ms",
            "ITL p95" if llm else "p99 ms",
            "rej / t.o.",
            "GPU-h",
            "×orc",
            "node-h",
            "$",
            "cold",
            "scale",
            "mem%",
            "SM%",
        )
        keep = list(range(8))
        if nodes:
            keep += [8, 9]
            if width < 100:
                keep.remove(4)
        elif wide:
            keep += [9]
        if wide:
            keep += [10, 11, 12, 13]
        names = [row.policy for row in result.rows_for(scenario)]
        for i in keep:
            col = columns[i]
            t.add_column(
                col,
                no_wrap=col != "policy",
                justify="left" if col in ("", "policy") else "right",
                min_width=min(max(map(len, names), default=6), 24) if col == "policy" else None,
            )
        for row in result.rows_for(scenario):
            e = row.estimates
            if row.failed and e["slo_attainment"].n == 0:
                t.add_row("✗", row.policy, f"[red]failed: {row.errors[0] if row.errors else ''}[/]")
                continue
            name = row.policy + (" [red](failed runs)[/]" if row.failed else "")
            cells = _row_cells(row, "★" if row.pareto else "", name, llm, wide)
            t.add_row(*(cells[i] for i in keep))
        _reference_rows(t, result, scenario, keep, llm, wide)
        tables.append(t)
    return tables


def _row_cells(row: Any, mark: str, name: str, llm: bool, wide: bool) -> tuple[str, ...]:
    """Every column of one compare-table row (a policy's or a reference's), in the table's order."""
    e = row.estimates
    rej, tout = e["rejected"].mean or 0.0, e["timed_out"].mean or 0.0
    lat = ("ttft_p95_ms", "itl_p95_ms") if llm else ("latency_p95_ms", "latency_p99_ms")
    return (
        mark,
        name,
        _ci(e["slo_attainment"], 2, 100.0, wide),
        _ci(e[lat[0]], 0, 1.0, wide),
        _ci(e[lat[1]], 1 if llm else 0, 1.0, wide),
        f"{rej:,.0f} / {tout:,.0f}",
        _ci(e["gpu_hours"], 2, 1.0, wide),
        _fmt(row.gpu_hours_x_oracle.mean, 2, "×"),
        _ci(e["node_hours"], 2, 1.0, wide),
        _ci(e["cost_usd"], 2, 1.0, wide),
        _fmt(e["cold_starts"].mean, 0),
        _fmt(e["scale_events"].mean, 0),
        _fmt(e["mean_gpu_memory_util_pct"].mean, 0),
        _fmt(e["mean_sm_util_pct"].mean, 0),
    )


def _reference_rows(t: Table, result: Any, scenario: str, keep: list[int], llm: bool, wide: bool) -> None:
    """The simulator-only references under the ranked policies (dim, unranked), and the bound's note
    as the table's caption (:func:`gpuscale.experiments.report.bound_note`)."""
    from gpuscale.experiments.report import bound_note, reference_rows

    rows = reference_rows(result, scenario)
    if rows:
        t.add_section()
    for row in rows:
        e = row.estimates
        name = f"[dim italic]{row.policy} (reference)[/]"
        if e["slo_attainment"].n == 0:
            t.add_row("ref", name, f"[red]failed: {row.errors[0] if row.errors else ''}[/]")
            continue
        cells = _row_cells(row, "ref", name, llm, wide)
        t.add_row(*(cells[i] for i in keep))
    note = bound_note(result, scenario)
    if note:
        t.caption = note
        t.caption_justify = "left"


class _RateColumn(ProgressColumn):
    """Finished jobs per second, as the completions (local workers or a Ray cluster) come in."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.2f} jobs/s", style="progress.data.speed")


def _run_progress() -> Progress:
    """The transient bar of a batch of simulations (compare, tune), on standard error: fed by each
    finished job, with jobs per second and the time left at that rate."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def _default_image() -> str:
    from gpuscale.controller.manifests import default_image

    return default_image()


def _ray_pool(address: str, workers: int | None) -> Any:
    """A :class:`~gpuscale.experiments.ray_runner.RayPool` for ``--ray ADDRESS`` (``local``: sized to
    ``workers`` CPUs); the dashboard's address is printed when the cluster has one."""
    from gpuscale.experiments.ray_runner import RayPool, check_address

    return RayPool(check_address(address), num_cpus=workers)


def _run_store(out_dir: Path, resume: bool) -> Any:
    """Where finished runs are kept as they finish (OUT/.runs); emptied first unless resuming."""
    from gpuscale.experiments.checkpoint import STORE_DIR, RunStore

    store = RunStore(out_dir / STORE_DIR)
    if not resume:
        store.clear()
    return store


def _say_kept(store: Any, out_dir: Path) -> None:
    """After an interrupted run: where its finished runs are, and how to go on."""
    kept = len(list(store.folder.glob("*.pkl"))) if store.folder.is_dir() else 0
    if kept:
        err.print(
            f"{kept} finished oracles and runs are kept in {store.folder}/; run the same command with "
            f"--resume (and --out {out_dir}) to go on from there",
            highlight=False,
            soft_wrap=True,
        )


def _say_ray(pool: Any) -> None:
    where = "a Ray instance on 127.0.0.1" if pool.address == "local" else f"the Ray cluster at {pool.address}"
    dash = f"; dashboard {pool.dashboard_url}" if pool.dashboard_url else ""
    err.print(f"running on {where}{dash}", highlight=False, soft_wrap=True)


@app.command()
def compare(
    scenarios: Annotated[
        str | None,
        typer.Option(help="Comma-separated scenario names or files (default: the built-in suite)."),
    ] = None,
    policies: Annotated[
        str | None,
        typer.Option(help="Comma-separated presets, policy files, or static-peak (default: all presets)."),
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (default 1,2,3).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: all cores).")] = None,
    suite: Annotated[
        Path | None, typer.Option(help="A suite YAML (scenarios, policies, seeds, slo_target).")
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for report.html, summary.csv, summary.json.",
            callback=_out_folder,
            parser=_out_path,
        ),
    ] = Path("out/compare"),
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run the simulations on Ray: local (start Ray on this machine for the run), auto (join "
            "the cluster running here) or a head's HOST:PORT. Default: local worker processes, or the "
            "suite's runner.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Reuse the runs an interrupted compare into the same --out finished (kept in "
            "OUT/.runs, keyed by scenario, policy, seed and code version); run only the rest.",
        ),
    ] = False,
    references: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated simulator-only references beside the oracle: feasible (the oracle's "
            "schedule asked for one real cold start and node provisioning ahead), auto (feasible where "
            "the bound cannot be reached), receding-horizon (the ceiling of planning; slow), or none. "
            "Default: the suite's, else auto.",
        ),
    ] = None,
) -> None:
    """The main job: policies on scenarios over several seeds (by default the built-in suite), ranked on
    SLO attainment against GPU-hours and dollars, next to a clairvoyant oracle; writes report.html,
    summary.csv, summary.json."""
    from gpuscale.experiments.compare import run_compare
    from gpuscale.experiments.report import report_files
    from gpuscale.experiments.runner import default_workers
    from gpuscale.experiments.suite import (
        SuiteConfig,
        load_suite,
        parse_references,
        parse_seeds,
        split_list,
    )

    with user_errors():
        cfg = load_suite(suite) if suite is not None else SuiteConfig()
        updates: dict[str, Any] = {}
        if scenarios is not None:
            updates["scenarios"] = split_list(scenarios, "--scenarios")
        if policies is not None:
            updates["policies"] = split_list(policies, "--policies")
        if seeds is not None:
            updates["seeds"] = parse_seeds(seeds)
        if references is not None:
            updates["references"] = parse_references(references)
        cfg = cfg.model_copy(update=updates)
        _check_compare_policies(
            cfg.policies, "--policies" if policies is not None or suite is None else str(suite)
        )
        _check_run_sizes(cfg.scenarios)
        n_workers = workers or cfg.workers or default_workers()
        start = time.perf_counter()
        bar = _run_progress()
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                label = {"oracle": "oracles", "reference": "references"}.get(phase, "simulations")
                tasks[phase] = bar.add_task(label, total=total)
            bar.update(tasks[phase], completed=done)

        address = ray if ray is not None else (cfg.ray_address if cfg.runner == "ray" else None)
        for spec in cfg.scenarios:
            resolve_scenario(spec)  # a bad scenario fails before a cluster is joined or a run is kept
        store = _run_store(out_dir, resume)
        try:
            if address is None:
                with bar:
                    result = run_compare(cfg, workers=n_workers, progress=progress, store=store)
            else:
                with _ray_pool(address, workers or cfg.workers) as pool:
                    _say_ray(pool)
                    with bar:
                        result = run_compare(
                            cfg, workers=n_workers, progress=progress, pool=pool, store=store
                        )
        except (KeyboardInterrupt, GpuscaleError):
            _say_kept(store, out_dir)
            raise
        wall = time.perf_counter() - start
        # the plots are drawn in forked worker processes, which a process that ran Ray should not fork
        write_files_atomically(out_dir, report_files(result, n_workers if address is None else 1))
    for table in compare_tables(result):
        _print_unwrapped(table)
    ok = [r for r in result.runs if r.summary is not None]
    requests = sum(r.summary.requests for r in ok if r.summary is not None)
    failed = len(result.runs) - len(ok)
    out.print(
        f"{len(result.runs)} runs ({failed} failed) of {len(result.scenarios)} scenarios × {len(result.policies)} "
        f"policies × {len(result.seeds)} seeds in {wall:.1f} s on "
        f"{f'{n_workers} workers' if address is None else f'Ray ({address})'}: "
        f"{len(result.runs) / wall:.2f} runs/s, {requests / wall / 1e6:.2f} M simulated requests/s. "
        f"Report: {out_dir}/report.html",
        soft_wrap=not out.is_terminal,
    )
    if store.reused:
        out.print(f"{store.reused} finished oracles and runs reused from {store.folder}/", highlight=False)


def _check_compare_policies(names: list[str], source: str) -> None:
    """Refuse (before any simulation) a compare policy that is not static-peak, a preset or a valid
    policy file; ``source`` is --policies or the suite file (whose key is then ``policies[i]``)."""
    from gpuscale.experiments.suite import STATIC_PEAK
    from gpuscale.policies import registry

    for i, name in enumerate(names):
        if name == STATIC_PEAK:
            continue
        key = None if source == "--policies" else f"policies[{i}]"
        try:
            spec = registry.resolve_policy(name, key=key, source=source)
        except ConfigError as exc:
            if (exc.source, exc.key, exc.value) != (source, key, name):
                raise  # a policy file that is missing or broken: its own message
            raise ConfigError(
                source,
                key,
                name,
                f"not a policy file or a preset; allowed: {STATIC_PEAK}, a policy YAML file, or a preset: "
                f"{', '.join(registry.preset_names())}",
            ) from None
        spec.config()


def _check_run_sizes(specs: list[str]) -> None:
    """Refuse (before any simulation, oracles included) a scenario whose runs would ask more of the
    machine than one run may: requests, users, control-plane steps or memory (``check_run``)."""
    from gpuscale.sim.engine import check_run

    for spec in specs:
        ref = resolve_scenario(spec)
        check_run(ref.scenario, base_dir=ref.base_dir, source=ref.source)


def tune_table(result: Any, top: int = 10) -> Table:
    """The best ``top`` candidates by rank, and the baseline wherever it ranks. A terminal under 120
    columns gets the headline columns only (candidates.csv has everything)."""
    from gpuscale.experiments.tune import param_values, saving_usd

    wide = out.size.width >= 120
    t = Table(
        title=f"{result.policy} ({result.kind}) on {', '.join(result.scenarios)} · seeds "
        f"{','.join(map(str, result.seeds))} · SLO target {100 * result.slo_target:g} % on every scenario",
        title_justify="left",
    )
    keys = [p.key for p in result.params]
    cap = 24 if wide else 14
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("candidate", no_wrap=True)
    for key in keys:
        t.add_column(key if len(key) <= cap else "…" + key[-(cap - 1) :], justify="right", no_wrap=True)
    columns = ("min SLO %", "p95 ms", "GPU-h", "$", "saving $", "meets")
    for col in columns:
        if wide or col not in ("p95 ms", "saving $"):
            t.add_column(col, justify="right", no_wrap=True)
    shown = result.ranked[:top]
    if result.baseline not in shown:
        shown.append(result.baseline)
    for s in shown:
        values = param_values(result, s)
        p95s = [sc.latency_p95_ms for sc in s.scenarios.values() if sc.latency_p95_ms is not None]
        cells = {
            "min SLO %": _fmt(None if s.worst_attainment is None else 100 * s.worst_attainment, 2),
            "p95 ms": _fmt(max(p95s) if p95s else None, 0),
            "GPU-h": _fmt(s.gpu_hours, 2),
            "$": _fmt(s.cost_usd, 2),
            "saving $": _fmt(saving_usd(result, s), 2),
            "meets": "yes"
            if s.meets_slo
            else "pruned"
            if s.candidate.label in result.pruned
            else ("[red]failed[/]" if s.worst_attainment is None else "no"),
        }
        style = "bold green" if s is result.winner else ("dim" if s.candidate.index == 0 else None)
        t.add_row(
            str(s.rank),
            s.candidate.label + (" ★" if s is result.winner else ""),
            *("default" if values[k] is None else str(values[k]) for k in keys),
            *(cells[c] for c in columns if wide or c not in ("p95 ms", "saving $")),
            style=style,
        )
    return t


@app.command()
def tune(
    policy: Annotated[
        str, typer.Option("--policy", "-p", help="The policy to tune: a preset name or a policy YAML file.")
    ],
    scenarios: Annotated[str, typer.Option(help="Comma-separated scenario names or files.")],
    param: Annotated[
        list[str],
        typer.Option(
            "--param",
            help="KEY=SPEC, repeatable. KEY is a dotted path into the policy config (target, "
            "metrics.0.target.average_value, behavior.scale_down.stabilization_window_s); SPEC is a "
            "list A,B,C or a range LO:HI (random: uniform, integers if both ends are) or LO:HI:STEPS.",
        ),
    ],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "1,2,3",
    method: Annotated[
        str,
        typer.Option(
            help="tpe (Optuna's TPE sampler proposes --budget candidates, learning from the finished "
            "ones), grid (the full product of the values) or random (--budget samples)."
        ),
    ] = "tpe",
    budget: Annotated[
        int,
        typer.Option(
            min=1, help="tpe: how many trials; random: how many candidates; grid: the most it may have."
        ),
    ] = 50,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune/--no-prune",
            help="tpe: stop a candidate's runs once it can no longer meet the target on a scenario.",
        ),
    ] = True,
    objectives: Annotated[
        str | None,
        typer.Option(
            help="tpe: search two objectives, attainment,gpu_hours or attainment,cost (NSGA-II): the "
            "Pareto front goes to candidates.* and report.html; the winner keeps the one-objective rule.",
        ),
    ] = None,
    slo_target: Annotated[
        float, typer.Option(help="Share of requests within the SLO that counts as met, on every scenario.")
    ] = 0.99,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: all cores).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random search.")] = 0,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for tuned-policy.yaml, candidates.csv and candidates.json.",
            callback=_out_folder,
            parser=_out_path,
        ),
    ] = Path("out/tune"),
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run the simulations on Ray: local (start Ray on this machine for the run), auto (join "
            "the cluster running here) or a head's HOST:PORT. Default: local worker processes.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Reuse the runs an interrupted tune into the same --out finished (kept in OUT/.runs, "
            "keyed by scenario, candidate settings, seed and code version); run only the rest.",
        ),
    ] = False,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            metavar="URL",
            help="Keep the search as an Optuna study in sqlite:///PATH or journal:///PATH (folders "
            "created): the same command again resumes it (finished trials read back, trials of a "
            "process that died asked again), and several tune processes on one storage and study "
            "share its trials.",
        ),
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(
            "--study-name",
            metavar="NAME",
            help="The study's name in --storage (default: tune-POLICY-DIGEST, a digest of the search: "
            "policy, scenarios, seeds, params, method, seed, objectives and code version). A study "
            "made by another search is refused.",
        ),
    ] = None,
) -> None:
    """Search a policy's parameters on one or more scenarios for the cheapest configuration that meets
    the SLO target on every scenario (mean over seeds); the untuned policy is candidate 0, the baseline.
    Writes tuned-policy.yaml (for `simulate -p`), candidates.csv and candidates.json."""
    from gpuscale.experiments.runner import default_workers
    from gpuscale.experiments.suite import parse_seeds, split_list
    from gpuscale.experiments.tune import param_values, parse_param, run_tune, saving_usd, tune_files

    with user_errors():
        if method not in ("tpe", "grid", "random"):
            raise ConfigError("--method", None, method, "allowed: tpe, grid, random")
        specs = [parse_param(p) for p in param]
        from gpuscale.experiments.tune import parse_objectives

        goals = parse_objectives(objectives) if objectives is not None else ()
        if goals and method != "tpe":
            raise ConfigError("--objectives", None, objectives, "a multi-objective search is --method tpe")
        scenario_specs = split_list(scenarios, "--scenarios")
        _check_run_sizes(scenario_specs)
        n_workers = workers or default_workers()
        start = time.perf_counter()
        bar = _run_progress()
        task: list[Any] = []

        def progress(done: int, total: int) -> None:
            if not task:
                task.append(bar.add_task("simulations", total=total))
            bar.update(task[0], completed=done)

        from gpuscale.experiments.tune import check_tune_input

        # every candidate checked before a cluster is joined or a run is kept
        check_tune_input(policy, scenario_specs, specs, method, budget, slo_target, seed)
        if study_name is not None and storage is None:
            raise ConfigError(
                "--study-name", None, study_name, "names a study in --storage: give --storage too"
            )
        if study_name is not None and not study_name.strip():
            raise ConfigError("--study-name", None, study_name, "a non-empty name")
        if storage is not None:
            from gpuscale.experiments.study import check_storage, default_study_name
            from gpuscale.experiments.tune import search_definition

            check_storage(storage)
            study_name = study_name or default_study_name(
                search_definition(
                    policy, scenario_specs, specs, parse_seeds(seeds), method, budget, slo_target, seed,
                    prune, goals,
                )
            )  # fmt: skip
        store = _run_store(out_dir, resume)

        def search(pool: Any = None) -> Any:
            return run_tune(
                policy,
                scenario_specs,
                specs,
                seeds=parse_seeds(seeds),
                method="tpe" if method == "tpe" else "grid" if method == "grid" else "random",
                budget=budget,
                slo_target=slo_target,
                seed=seed,
                workers=n_workers,
                progress=progress,
                pool=pool,
                store=store,
                prune=prune,
                objectives=goals,
                storage=storage,
                study_name=study_name,
            )

        try:
            if ray is None:
                with bar:
                    result = search()
            else:
                with _ray_pool(ray, workers) as ray_pool:
                    _say_ray(ray_pool)
                    with bar:
                        result = search(ray_pool)
        except (KeyboardInterrupt, GpuscaleError):
            _say_kept(store, out_dir)
            raise
        wall = time.perf_counter() - start
        write_files_atomically(out_dir, tune_files(result))
    _print_unwrapped(tune_table(result))
    w = result.winner
    chosen = ", ".join(f"{k}={'default' if v is None else v}" for k, v in param_values(result, w).items())
    if w.meets_slo:
        saving = saving_usd(result, w) or 0.0
        base = result.baseline.cost_usd or 0.0
        pct = f" ({100 * abs(saving) / base:.1f} %)" if base > 0 else ""
        against = f"{'saves' if saving >= 0 else 'costs'} ${abs(saving):,.4f}{pct}"
        against += " against" if saving >= 0 else " more than"
        out.print(
            f"Winner {w.candidate.label}: {chosen}. ${w.cost_usd or 0.0:,.4f}, {w.gpu_hours or 0.0:,.3f} "
            f"GPU-h; {against} the baseline "
            f"(${base:,.4f}{'' if result.baseline.meets_slo else ', which misses the target'}).",
            highlight=False,
        )
    else:
        out.print(
            f"[bold red]No candidate meets the SLO target of {100 * result.slo_target:g} % on every scenario.[/] "
            f"Best worst-scenario attainment: {w.candidate.label} ({chosen}) at "
            f"{100 * (w.worst_attainment or 0.0):.2f} %; tuned-policy.yaml holds it.",
            highlight=False,
        )
    out.print(
        f"{len(result.candidates)} candidates × {len(result.scenarios)} scenarios × {len(result.seeds)} seeds "
        f"= {len(result.runs)} runs in {wall:.1f} s on "
        f"{f'{n_workers} workers' if ray is None else f'Ray ({ray})'}. Files in {out_dir}/",
        highlight=False,
    )
    if result.objectives:
        out.print(
            f"Pareto front ({' vs '.join(result.objectives)}): {', '.join(result.front)}; "
            f"plotted in {out_dir}/report.html",
            highlight=False,
        )
    if result.method == "tpe" and not result.objectives:
        planned = len(result.candidates) * len(result.scenarios) * len(result.seeds)
        out.print(
            f"TPE: {result.trials} trials, {len(result.candidates) - 1} distinct candidates; pruning "
            f"{len(result.pruned)} hopeless candidates saved {result.runs_saved} of {planned} runs "
            f"({100 * result.runs_saved / max(planned, 1):.0f} %).",
            highlight=False,
        )
    if store.reused:
        out.print(f"{store.reused} finished runs reused from {store.folder}/", highlight=False)
    if storage is not None:
        out.print(f"Study {study_name} in {storage}: run the same command to resume it.", highlight=False)


_DESCRIPTION_MIN_WIDTH = 40
"""A terminal that leaves the description column fewer characters gets the compact scenario list."""


@scenarios_app.command("list")
def scenarios_list() -> None:
    """The built-in scenarios: one line each into a pipe or a file; folded to fit a terminal, where a
    narrow one gets each scenario's facts in one column and its description beside them."""
    with user_errors():
        rows = []
        for name in scenario_names():
            sc = builtin_scenario(name)
            facts = (
                name,
                f"{sc.duration_s / 60:.3g} min",
                sc.workload.kind,
                sc.model.name,
                f"{sc.slo.latency_ms:g} ms",
            )
            rows.append((facts, " ".join(sc.description.split())))
    columns = ("name", "duration", "workload", "model", "SLO")
    facts_width = sum(max(len(col), *(len(f[i]) for f, _ in rows)) + 3 for i, col in enumerate(columns)) + 4
    t = Table(title="Built-in scenarios")
    if out.is_terminal and out.size.width < facts_width + _DESCRIPTION_MIN_WIDTH:
        t.add_column("scenario", no_wrap=True)
        t.add_column("description", overflow="fold", ratio=1)
        for (name, duration, kind, model, slo), text in rows:
            t.add_row(Text.assemble((name, "bold"), f"\n{duration} · {kind}\n{model}\nSLO {slo}"), text)
    else:
        for col in (*columns, "description"):
            t.add_column(
                col, overflow="fold", no_wrap=col != "description", ratio=1 if col == "description" else None
            )
        for facts, text in rows:
            t.add_row(*facts, text)
    _print_unwrapped(t)


@scenarios_app.command("show")
def scenarios_show(name: Annotated[str, typer.Argument(help="A built-in scenario name.")]) -> None:
    """Print a built-in scenario's YAML (copy it to start your own)."""
    from importlib import resources

    with user_errors():
        builtin_scenario(name)
        text = (
            resources.files("gpuscale.experiments").joinpath("scenarios", f"{name}.yaml").read_text("utf-8")
        )
    out.print(text, highlight=False, markup=False, soft_wrap=True)


@profiles_app.command("list")
def profiles_list() -> None:
    """Built-in model profiles, with their sources."""
    t = Table(title="Model profiles (LLM: served token by token, docs/llm.md)")
    for col in ("name", "GPU", "max batch", "latency (batch → ms) / LLM iteration", "CPU ms/req", "source"):
        t.add_column(col, overflow="fold", no_wrap=col == "name")
    for p in BUILTIN_PROFILES.values():
        llm = p.llm
        if llm is not None:
            batch = f"{llm.max_num_seqs} seqs"
            pts = (
                f"LLM: {llm.beta0_ms:g} ms + {llm.beta_prefill_ms_per_token:g}/prefill token + "
                f"{llm.beta_decode_ms_per_token:g}/decode token; {p.kv_cache_blocks():,} KV blocks"
            )
        else:
            batch = str(p.max_batch_size)
            pts = ", ".join(f"{b}→{ms:g}" for b, ms in p.batch_latency_ms[:4])
            if len(p.batch_latency_ms) > 4:
                pts += ", …"
        gpu_name = p.gpu if p.gpus_per_pod == 1 else f"{p.gpus_per_pod}× {p.gpu}"
        t.add_row(p.name, gpu_name, batch, pts, f"{p.cpu_ms_per_request:g}", p.source)
    out.print(t)
    g = Table(title="GPU types")
    for col in ("name", "memory", "$/GPU-hour", "price source"):
        g.add_column(col, overflow="fold")
    for gpu in GPU_TYPES.values():
        g.add_row(gpu.name, f"{gpu.memory_gb:g} GB", f"{gpu.usd_per_gpu_hour:.3f}", gpu.price_source)
    out.print(g)


@policies_app.command("list")
def policies_list() -> None:
    """Policy kinds and presets."""
    from gpuscale.policies import registry

    t = Table(title="Policy kinds (use with `kind:` in a policy YAML)")
    t.add_column("kind")
    t.add_column("what it does", overflow="fold")
    for info in registry.policy_kinds():
        t.add_row(info.kind, info.summary)
    _print_unwrapped(t)
    p = Table(title="Presets (use with --policy NAME)")
    p.add_column("preset")
    p.add_column("kind")
    for name in registry.preset_names():
        p.add_row(name, registry.load_preset_config(name).kind)
    _print_unwrapped(p)


@policies_app.command("show")
def policies_show(
    name: Annotated[str, typer.Argument(help="A preset name or a policy kind.")],
    kind: Annotated[
        bool, typer.Option("--kind", help="Show the policy kind NAME even where a preset has that name.")
    ] = False,
) -> None:
    """A preset's YAML exactly as shipped, or a policy kind's parameters with their defaults and meanings.

    A preset prints as YAML that loads back as the same policy: `gpuscale policies show gpu-util >
    my-policy.yaml` starts your own. A name that is both a preset and a kind (knative, ray-serve,
    warm-pool) shows the preset, the policy `--policy NAME` runs, and says so on stderr; `--kind`
    shows the kind's parameters instead."""
    from gpuscale.policies import registry

    with user_errors():
        if not kind and name in registry.preset_names():
            typer.echo(registry.preset_text(name), nl=False)
            if name in registry.kind_names():
                err.print(
                    f"note: {name} is also a policy kind; `gpuscale policies show --kind {name}` lists its "
                    "parameters",
                    highlight=False,
                    soft_wrap=True,
                )
            return
        params = registry.describe_kind(name)
    t = Table(title=f"kind: {name}")
    for col in ("parameter", "type", "default", "meaning"):
        t.add_column(col, overflow="fold", no_wrap=col == "parameter")
    for prm in params:
        t.add_row(prm.name, prm.type, prm.default, prm.description)
    _print_unwrapped(t)


def _print_unwrapped(table: Table) -> None:
    """Print ``table`` on standard output: folded to fit a terminal, at its full width into a pipe or
    a file (where nothing wraps lines)."""
    if out.is_terminal:
        out.print(table)
        return
    wide = Console(file=out.file, width=100_000)
    wide.print(table, width=wide.measure(table).maximum)


def _policy_config(spec: str) -> Any:
    """A policy file or preset name as its validated config (not built)."""
    from gpuscale.policies import registry

    return registry.resolve_policy(spec, key=None, source="--policy").config()


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and one rename."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command()
def schema(
    kind: Annotated[
        str,
        typer.Argument(help="The file kind: scenario, policy, controller, keda-scaler or suite."),
    ],
    markdown: Annotated[
        bool, typer.Option("--markdown", help="The reference page (every key) instead of the JSON Schema.")
    ] = False,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write to this file instead of printing.", callback=_out_file, parser=_out_path
        ),
    ] = None,
) -> None:
    """Print a file kind's JSON Schema (for editors and validators) or its reference page."""
    from gpuscale.schemas import FILE_KINDS, reference_markdown, schema_text

    with user_errors():
        if kind not in FILE_KINDS:
            raise ConfigError(
                "command line", "KIND", kind, f"unknown file kind; allowed: {', '.join(FILE_KINDS)}"
            )
        text = reference_markdown(kind) if markdown else schema_text(kind)
        if out_file is None:
            sys.stdout.write(text)
        else:
            _write_atomically(out_file, text)


@app.command()
def capacity(
    scenario: Annotated[str, typer.Argument(help="A built-in scenario name or a scenario YAML file.")],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the planner policy file here (default: print it).",
            callback=_out_file,
            parser=_out_path,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Seed whose peak load the table covers (default: the scenario's)."),
    ] = None,
    slo_target: Annotated[
        float, typer.Option(min=0.5, max=1.0, help="Share of requests within the SLO (default 0.99).")
    ] = 0.99,
) -> None:
    """Measure what one replica of the scenario's service carries within the SLO by fleet size (the
    oracle's bisection) and write a `kind: planner` policy file with that capacity table."""
    with user_errors():
        ref = resolve_scenario(scenario)
        from gpuscale.experiments.capacity import measure, policy_yaml

        inputs = measure(
            ref.scenario, seed=seed, slo_target=slo_target, base_dir=ref.base_dir, source=ref.source
        )
        text = policy_yaml(ref.scenario, inputs)
        if out_file is not None:
            _write_atomically(out_file, text)
    if out_file is None:
        typer.echo(text, nl=False)
    else:
        points = inputs["capacity"]["points"]
        err.print(
            f"wrote {out_file}: {len(points)} fleet sizes measured, up to {points[-1]['replicas']} replicas"
        )


@app.command()
def manifests(
    what: Annotated[
        str | None,
        typer.Argument(
            help="Leave out for a policy's native autoscaler manifests; `controller` for the objects "
            "that run `gpuscale run` in the cluster (with --config); `rayjob` for a KubeRay RayJob "
            "that runs a compare suite (--config SUITE) on a Ray cluster.",
            show_default=False,
        ),
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", "-p", help="A policy YAML file or preset name.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="The workload to scale, KIND/NAME (e.g. Deployment/resnet50).")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            help="The workload's namespace (default 'default'); for `controller`: where it runs.",
            callback=_namespace,
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="native (default: the policy's own autoscaler -- an HPA with its prometheus-adapter rules, "
            "a KEDA ScaledObject, or Knative's settings -- and its warm-node buffer), hpa, keda, knative, "
            "adapter (prometheus-adapter rules), headroom (the warm-node buffer's placeholder pods), or all "
            "(every form, for review: alternatives, apply one).",
        ),
    ] = "native",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="`controller`: the controller's config YAML.")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="The container image: for `controller`, default localhost/gpuscale:VERSION (built by "
            "scripts/build-image.sh, docs/image.md); for `rayjob`, required: an image with gpuscale and "
            "ray[default]."
        ),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the YAML here (default stdout).", callback=_out_file, parser=_out_path
        ),
    ] = None,
    ray_workers: Annotated[
        int, typer.Option("--ray-workers", min=1, max=1000, help="`rayjob`: Ray worker pods (2 CPUs each).")
    ] = 2,
) -> None:
    """Render the native Kubernetes manifests (HPA, KEDA, Knative/KServe, prometheus-adapter) of a
    policy; comments mark wherever the native form differs from the policy.

    `gpuscale manifests controller --config FILE` renders instead the ServiceAccount, least-privilege
    Role and RoleBinding, ConfigMap and Deployment that run the live controller in the cluster."""
    with user_errors():
        if what == "controller":
            from gpuscale.controller import load_controller_config
            from gpuscale.controller.manifests import render_controller, render_controller_yaml

            if config is None:
                raise ConfigError(
                    "manifests controller", "--config", MISSING, "required: the controller config"
                )
            cfg = load_controller_config(config)
            objects = render_controller(cfg, config, namespace=namespace, image=image)
            text = render_controller_yaml(objects, cfg, str(config))
        elif what == "rayjob":
            from gpuscale.config.loading import read_text
            from gpuscale.experiments.rayjob import render_rayjob, render_rayjob_yaml
            from gpuscale.experiments.suite import load_suite

            if config is None:
                raise ConfigError("manifests rayjob", "--config", MISSING, "required: the compare suite YAML")
            suite_text = read_text(config)
            load_suite(config, suite_text)  # a bad suite is refused here, not in the cluster
            if image is None:
                raise ConfigError(
                    "manifests rayjob",
                    "--image",
                    MISSING,
                    "required: an image with gpuscale and ray[default] (the controller's image, "
                    "localhost/gpuscale, has no Ray)",
                )
            objects = render_rayjob(
                config,
                suite_text,
                name="gpuscale-compare",
                namespace=namespace or "default",
                image=image,
                workers=ray_workers,
                cpus_per_worker=2,
            )
            text = render_rayjob_yaml(objects, config)
        elif what is not None:
            raise ConfigError(
                "manifests", None, what, "unknown argument; allowed: controller, rayjob (or none)"
            )
        else:
            from gpuscale.integrations.manifests import Target, render, render_yaml

            if policy is None or target is None:
                missing = "--policy" if policy is None else "--target"
                raise ConfigError(
                    "manifests", missing, MISSING, "required (or `manifests controller --config`)"
                )
            policy_config = _policy_config(policy)
            text = render_yaml(
                render(policy_config, Target.parse(target, namespace or "default"), fmt), policy
            )
        if out_file is not None:
            _write_atomically(out_file, text)
            return
    typer.echo(text, nl=False)


@app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(help="An HPA, KEDA ScaledObject, Knative Service or KServe InferenceService YAML."),
    ],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the policy YAML here (default stdout).", callback=_out_file, parser=_out_path
        ),
    ] = None,
) -> None:
    """Turn an existing autoscaler manifest into a gpuscale policy YAML (for simulate / compare)."""
    from gpuscale.config.loading import parse_yaml, read_text
    from gpuscale.integrations.importer import import_manifest, policy_yaml

    with user_errors():
        text = read_text(file)
        parse_yaml(text, str(file))  # bad YAML: one located error
        config = import_manifest(text, str(file))
        text = policy_yaml(config, f"imported by gpuscale from {file.name}")
        if out_file is not None:
            _write_atomically(out_file, text)
            return
    typer.echo(text, nl=False)


@app.command("keda-scaler")
def keda_scaler(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="The scaler's config YAML (policy, metrics source, TLS).")
    ],
    port: Annotated[int, typer.Option(min=0, max=65535, help="gRPC port; 0 picks a free one.")] = 9090,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface, as a Service needs).")
    ] = "0.0.0.0",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve the scaler's Prometheus metrics on this port (same host); off if unset.",
        ),
    ] = None,
) -> None:
    """Serve KEDA's external-scaler gRPC API, driven by a gpuscale policy, until interrupted."""
    import logging
    import signal

    from gpuscale._core.clock import SystemClock
    from gpuscale.integrations.keda_scaler import build_server, load_keda_scaler_config

    with user_errors():
        cfg = load_keda_scaler_config(config)
        server = build_server(cfg, config, SystemClock(), host=host, port=port, metrics_port=metrics_port)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        bound = server.start()
    err.print(f"gpuscale keda-scaler listening on {host}:{bound}", highlight=False)
    if server.metrics_port is not None:
        err.print(f"gpuscale keda-scaler metrics on {host}:{server.metrics_port}/metrics", highlight=False)

    def _on_signal(_signum: int, _frame: object) -> None:
        server.stop()  # Kubernetes sends SIGTERM: report NOT_SERVING, end the streams, drain

    signal.signal(signal.SIGTERM, _on_signal)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


@app.command("run")
def run_controller(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="The controller's config YAML (target, policy, safety).")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and log, but never write the scale.")
    ] = False,
    once: Annotated[bool, typer.Option("--once", help="One tick, then exit (1 if the tick failed).")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve /metrics, /healthz and /readyz on this port (0: a free one); "
            "default the config's metrics.port, else off.",
        ),
    ] = None,
    metrics_bind: Annotated[
        str | None,
        typer.Option(help="Address of the metrics endpoint; default the config's metrics.bind_address."),
    ] = None,
) -> None:
    """Run the live controller: scale a workload's scale subresource by a gpuscale policy.

    With `leader_election.enabled` several replicas may run; only the Lease holder acts."""
    import logging
    import signal
    import sys
    import threading

    from gpuscale._core.clock import SystemClock
    from gpuscale.controller import build_controller, load_controller_config
    from gpuscale.controller.config import check_signal_source
    from gpuscale.controller.loop import build_policy, json_lines_sink
    from gpuscale.controller.observe import ObservabilityServer

    clock = SystemClock()
    server: ObservabilityServer | None = None
    with user_errors():
        cfg = load_controller_config(config)
        check_signal_source(cfg, build_policy(cfg.policy, config), str(config))
        log_file = None
        if cfg.decision_log is not None:
            path = cfg.decision_log if cfg.decision_log.is_absolute() else config.parent / cfg.decision_log
            try:
                log_file = path.open("a", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    str(config), "decision_log", str(path), f"cannot be opened ({exc})"
                ) from None
        stream = log_file or sys.stdout
        sink = json_lines_sink(stream.write, stream.flush)
        controller = build_controller(cfg, config, clock, dry_run=dry_run, sink=sink)
        port = metrics_port if metrics_port is not None else cfg.metrics.port
        if port is not None and not once:
            assert controller.observer is not None and controller.status is not None
            server = ObservabilityServer(
                controller.observer.registry,
                controller.status,
                clock,
                host=metrics_bind or cfg.metrics.bind_address,
                port=port,
            )
            bound = server.start()
            err.print(f"gpuscale run: /metrics, /healthz, /readyz on {server.host}:{bound}", highlight=False)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if once:
            try:
                controller.elect()
                outcome = controller.tick()
            finally:
                if controller.elector is not None:
                    controller.elector.release()
            if outcome.action == "error" or outcome.error_kind is not None:
                raise typer.Exit(1)  # it failed, or decided while Prometheus did not answer
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
        try:
            controller.run(stop=stop)
        except KeyboardInterrupt:
            stop.set()
    finally:
        if server is not None:
            server.stop()
        if log_file is not None:
            log_file.close()


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option(help="A smaller run (1 min of traffic, no 24-h memory run).")
    ] = False,
) -> None:
    """Measure the simulator's speed (requests/s vs the SimPy reference; LLM tokens/s) and memory;
    prints figures."""
    from gpuscale.experiments.bench import run_bench, run_llm_bench

    if quick:
        figs = run_bench(duration_s=60.0, reference_s=5.0, long_s=None, cold_compile=False)
        llm = run_llm_bench(duration_s=120.0, memory=False)
    else:
        with err.status("benchmarking (about three minutes)…"):
            figs = run_bench()
            llm = run_llm_bench()
    t = Table(title="gpuscale bench (one core)", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row(
        f"{figs.duration_s / 60:g} min at 2,000 req/s, 32 pods, LOR, batching",
        f"{figs.requests:,} in {figs.wall_s:.2f} s",
    )
    t.add_row("engine: requests per second", f"{figs.requests_per_s / 1e6:.2f} M/s")
    t.add_row(
        "  same with a CPU stage and a 1-ms batching window", f"{figs.full_requests_per_s / 1e6:.2f} M/s"
    )
    t.add_row(
        "  same with the node layer on (cluster-autoscaler)",
        f"{figs.node_layer_requests_per_s / 1e6:.2f} M/s "
        f"({figs.node_layer_requests_per_s / figs.requests_per_s:.2f}×)",
    )
    t.add_row("SimPy reference: requests per second", f"{figs.reference_requests_per_s / 1e6:.3f} M/s")
    t.add_row("ratio engine / reference", f"{figs.ratio:.0f}×")
    t.add_row("first call in this process (cached compile)", f"{figs.first_call_s:.2f} s")
    if figs.cold_compile_s is not None:
        t.add_row("cold compile (empty cache, fresh process)", f"{figs.cold_compile_s:.1f} s")
    if figs.peak_rss_mb_24h is not None:
        t.add_row("24-h run: requests / wall time", f"{figs.requests_24h:,} / {figs.wall_s_24h:.1f} s")
        t.add_row("24-h run: peak memory (RSS)", f"{figs.peak_rss_mb_24h:.0f} MB")
    t.add_row(
        f"LLM: {llm.duration_s / 60:g} min, {llm.pods} vLLM pods (Llama-3-8B), Azure conversation mix",
        f"{llm.generated_tokens:,} tokens, {llm.requests:,} requests in {llm.wall_s:.2f} s",
    )
    t.add_row("  generated tokens per second", f"{llm.tokens_per_s / 1e6:.1f} M/s")
    t.add_row("  requests per second", f"{llm.requests_per_s / 1e6:.3f} M/s")
    kv = "-" if llm.mean_kv_cache_usage is None else f"{100 * llm.mean_kv_cache_usage:.0f} %"
    t.add_row("  mean KV-cache usage / preemptions", f"{kv} / {llm.preemptions:,}")
    if llm.peak_rss_mb is not None and llm.peak_rss_mb_quarter is not None:
        t.add_row(
            "  peak memory: the hour / its first quarter",
            f"{llm.peak_rss_mb:.0f} / {llm.peak_rss_mb_quarter:.0f} MB",
        )
    out.print(t)


@app.command()
def train(
    scenarios: Annotated[
        str | None,
        typer.Option(help="Comma-separated training scenarios (default: the four KIS-S patterns)."),
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated training seeds (default 1,2,3).")] = None,
    suite: Annotated[
        Path | None, typer.Option(help="A suite YAML: its scenarios, seeds and slo_target train the agent.")
    ] = None,
    algorithm: Annotated[str, typer.Option(help="ppo (default), a2c or dqn (Stable-Baselines3).")] = "ppo",
    timesteps: Annotated[int, typer.Option(help="Environment steps (control ticks) to train for.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the agent and the episode draws.")] = 0,
    eval_scenarios: Annotated[
        str | None, typer.Option(help="Held-out scenarios to evaluate on (default: the training ones).")
    ] = None,
    eval_seeds: Annotated[str, typer.Option(help="Held-out seeds to evaluate on.")] = "101",
    eval_every: Annotated[
        int, typer.Option(min=0, help="Evaluate and checkpoint every this many steps (0: at the end).")
    ] = 0,
    max_replicas: Annotated[int, typer.Option(min=1, help="Most replicas the agent may ask for.")] = 10,
    min_replicas: Annotated[int, typer.Option(min=0, help="Fewest replicas.")] = 1,
    tick_s: Annotated[float, typer.Option(min=1, help="Control tick, seconds (KIS-S: 30).")] = 30.0,
    stack: Annotated[int, typer.Option(min=1, help="Observation frames stacked.")] = 2,
    actions: Annotated[str, typer.Option(help="delta (-2..+2, KIS-S) or target (min..max).")] = "delta",
    reward: Annotated[str, typer.Option(help="cost-slo (default) or kis-s.")] = "cost-slo",
    start_offset_max_s: Annotated[
        float, typer.Option(min=0, help="The agent takes over at a random tick within this many seconds.")
    ] = 300.0,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            help="Folder for a model file at every evaluation.", callback=_out_folder, parser=_out_path
        ),
    ] = None,
    out_file: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The exported model file (.npz) for kind: learned.",
            callback=_out_file,
            parser=_out_path,
        ),
    ] = Path("out/learned.npz"),
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run the held-out evaluations on Ray, one task per scenario and seed: local, auto or a "
            "head's HOST:PORT (training stays here; the weights and figures are the same).",
        ),
    ] = None,
) -> None:
    """Train an autoscaling agent in the simulator (Stable-Baselines3) and export it for `kind: learned`."""
    from gpuscale.experiments.suite import load_suite, parse_seeds, split_list
    from gpuscale.experiments.train import Progress as TrainProgress
    from gpuscale.experiments.train import TrainConfig
    from gpuscale.experiments.train import train as run_train
    from gpuscale.policies.learned import ActionSpec
    from gpuscale.rl.env import EnvConfig, RewardSpec, ScalingEnv

    with user_errors():
        env_kw: dict[str, Any] = {}
        slo_target = 0.99
        if suite is not None:
            s = load_suite(suite)
            env_kw.update(scenarios=tuple(s.scenarios), seeds=tuple(s.seeds))
            slo_target = s.slo_target
        if scenarios is not None:
            env_kw["scenarios"] = tuple(split_list(scenarios, "--scenarios"))
        if seeds is not None:
            env_kw["seeds"] = tuple(parse_seeds(seeds))
        if actions not in ("delta", "target"):
            raise ConfigError("--actions", None, actions, "allowed: delta, target")
        if reward not in ("cost-slo", "kis-s"):
            raise ConfigError("--reward", None, reward, "allowed: cost-slo, kis-s")
        if min_replicas > max_replicas:
            raise ConfigError(
                "--min-replicas", None, min_replicas, f"must be <= --max-replicas ({max_replicas})"
            )
        action_spec = (
            ActionSpec("delta")
            if actions == "delta"
            else ActionSpec("target", low=min_replicas, high=max_replicas)
        )
        env_cfg = EnvConfig(
            **env_kw,
            stack=stack,
            actions=action_spec,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            tick_s=tick_s,
            start_offset_max_s=start_offset_max_s,
            reward=RewardSpec(reward, slo_target),  # type: ignore[arg-type]
        )
        held_out = tuple(split_list(eval_scenarios, "--eval-scenarios")) if eval_scenarios else ()
        cfg = TrainConfig(
            env=env_cfg,
            algorithm=algorithm,
            timesteps=timesteps,
            seed=seed,
            eval_scenarios=held_out,
            eval_seeds=tuple(parse_seeds(eval_seeds)),
            eval_every=eval_every,
            checkpoint_dir=checkpoints,
        )
        ScalingEnv(env_cfg)  # every scenario resolves before any work
        for name in held_out:
            resolve_scenario(name)
        if ray is not None:
            from gpuscale.experiments.ray_runner import check_address

            check_address(ray)  # a bad address fails before any training
        bar = Progress(
            TextColumn("training {task.fields[algo]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("{task.fields[eval]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        task = bar.add_task("train", total=timesteps, algo=algorithm, eval="")

        last = [""]

        def progress(p: TrainProgress) -> None:
            if p.evaluation is not None:
                e = p.evaluation
                last[0] = f"held-out: SLO {100 * e.slo_attainment:.2f} %, {e.gpu_hours:.2f} GPU-h"
            bar.update(task, completed=p.timesteps, eval=last[0])

        if ray is None:
            with bar:
                result = run_train(cfg, progress)
        else:
            with _ray_pool(ray, None) as pool:
                _say_ray(pool)
                with bar:
                    result = run_train(cfg, progress, pool=pool)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out_file.name}.", suffix=".npz", dir=out_file.parent)
        os.close(fd)
        try:
            result.network.save(tmp)
            os.replace(tmp, out_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    t = Table(title=f"{algorithm} held-out evaluation (exported network, kind: learned)")
    for col in ("steps", "SLO attainment", "runs meeting SLO", "GPU-hours", "cost $"):
        t.add_column(col, justify="right")
    for e in result.evaluations:
        t.add_row(
            str(e.timesteps),
            f"{100 * e.slo_attainment:.2f} %",
            f"{e.runs_meeting_slo}/{e.runs}",
            f"{e.gpu_hours:.2f}",
            f"{e.cost_usd:.2f}",
        )
    out.print(t)
    out.print(
        f"trained {timesteps} steps in {result.seconds:.1f} s ({timesteps / result.seconds:.0f} steps/s); "
        f"model written to {out_file}"
    )


_PARTS = {
    "numba": "the simulator",
    "llvmlite": "the simulator",
    "matplotlib": "the reports' plots",
    "simpy": "the reference simulator",
    "ray": "Ray",
    "optuna": "tuning",
    "torch": "training",
    "gymnasium": "the learning environment",
    "stable_baselines3": "training",
}
"""Packages the controller's container image leaves out, and what needs them."""


def main() -> None:
    """Entry point of the ``gpuscale`` command."""
    try:
        app(prog_name="gpuscale")
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in _PARTS:
            raise
        # the container image carries `run` and `keda-scaler` only: a command that needs more says so
        try:
            fail(
                f"this installation of gpuscale has no {top} ({_PARTS[top]} needs it); the container "
                "image runs `gpuscale run` and `gpuscale keda-scaler` only: run the other commands where "
                "scripts/setup.sh installed gpuscale"
            )
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
