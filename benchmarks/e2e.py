"""End-to-end benchmark: ``customer_360`` through all four hops, as a user runs it.

``make bench-e2e`` (or ``python benchmarks/e2e.py``) starts a local stack of its own in a temp
dir for each size, generates the sample source there (``customer_360`` only; not timed), and
materializes the export with all its checks through ``dagster asset materialize``: the job's
own executor (multiprocess, forkserver) in a run worker process of its own, as a run launched
from the UI is. It prints, per hop:

* ``wall s``: the asset step, from STEP_START to STEP_SUCCESS, and its checks (first start to
  last success);
* ``rss MB``: the peak RSS (VmHWM) of the asset step's process, and the largest of its checks';
* ``emulator share``: CPU seconds the local stack (fake-gcs-server, bqemulator, Spark) spent during the
  step over the step's wall time: the share of the step spent waiting on them (capped at 1);
* ``rows/s``: rows over the step's wall time.

Then the wall time of a 1,000-row export with all its checks (best of two runs on a warm
stack; the first is printed too), from launching the command to its exit. It ends with::

    bench-e2e: e2e_s_1m=<n> e2e_s_10m=<n> e2e_rss_mb_10m=<n> e2e_jvm_rss_mb_10m=<n> small_run_s=<n>

``e2e_s_*`` is the whole command's wall time, ``e2e_rss_mb_10m`` the largest peak RSS of any
step process at 10M rows, ``e2e_jvm_rss_mb_10m`` the Spark stand-in's (the Databricks SQL
warehouse's) JVM at its largest during that run. Targets: the 10M run completes; every step ≤ 1 GB; the stand-in
copy (``databricks``) ≥ 200k rows/s; the small run ≤ 15 s. ``--join FILE`` prefixes the closing
line with the last line of FILE (``make bench`` joins the export-hop benchmark's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bq_assets.local import sample_data, stack  # noqa: E402

DAGSTER = str(Path(sys.executable).parent / "dagster")
EXPORT = "customer_360"
HOPS = ("query", "gcs", "bigquery", "databricks")
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_RSS_MB = 1024
TARGET_COPY_ROWS_S = 200_000
TARGET_SMALL_RUN_S = 15.0


# -- watching processes through /proc -------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on


def _cpu_s(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICKS if fields else 0.0


def _status_mb(pid: int, field_name: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM")


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass
class Watch:
    """Samples, every 0.2 s: peak RSS of every process under the command, the stack's CPU and the
    Spark stand-in's RSS (its JVM outlives a run, so its peak is sampled during the run)."""

    command_pid: int
    emulator_pids: tuple[int, ...]
    jvm_pid: int = 0
    peak_rss: dict[int, float] = field(default_factory=dict)
    jvm_peak_rss: float = 0.0
    emulator_cpu: list[tuple[float, float]] = field(default_factory=list)  # (epoch s, cpu s)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watch:
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in _descendants(self.command_pid) | {self.command_pid}:
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0.0), _peak_rss_mb(pid))
            if self.jvm_pid:
                self.jvm_peak_rss = max(self.jvm_peak_rss, _status_mb(self.jvm_pid, "VmRSS"))
            cpu = sum(_cpu_s(pid) for pid in self.emulator_pids)
            self.emulator_cpu.append((time.time(), cpu))
            self._stop.wait(0.2)

    def emulator_cpu_between(self, start: float, end: float) -> float:
        inside = [cpu for t, cpu in self.emulator_cpu if start <= t <= end]
        before = [cpu for t, cpu in self.emulator_cpu if t < start]
        if not inside:
            return 0.0
        return inside[-1] - (before[-1] if before else inside[0])


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Step:
    key: str
    pid: int
    start: float
    end: float
    rows: int | None = None

    @property
    def wall_s(self) -> float:
        return self.end - self.start


@dataclass
class Run:
    rows: int
    wall_s: float
    ok: bool
    steps: dict[str, Step]
    watch: Watch
    tail: str

    def rss_mb(self, step: Step) -> float:
        return self.watch.peak_rss.get(step.pid, 0.0)

    def max_step_rss_mb(self) -> float:
        return max((self.rss_mb(step) for step in self.steps.values()), default=0.0)


def _steps(home: Path) -> dict[str, Step]:
    import dagster as dg

    steps: dict[str, Step] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        for record in instance.get_records_for_run(run.run_id, limit=100_000).records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None or entry.step_key is None:
                continue
            if event.event_type_value == "STEP_START":
                steps[entry.step_key] = Step(entry.step_key, event.pid or 0, entry.timestamp, 0.0)
            elif event.event_type_value == "STEP_SUCCESS" and entry.step_key in steps:
                steps[entry.step_key].end = entry.timestamp
            elif event.event_type_value == "ASSET_MATERIALIZATION" and entry.step_key in steps:
                count = event.step_materialization_data.materialization.metadata.get(
                    "dagster/row_count"
                )
                steps[entry.step_key].rows = int(count.value) if count is not None else None
    return steps


def _prepare(root: Path, rows: int) -> tuple[stack.StackState, Path]:
    state = stack.up(root)
    started = time.monotonic()
    sample_data.generate(root / "source.duckdb", rows, transactions=False)
    print(f"bench-e2e: generated {rows:,} rows in {time.monotonic() - started:.1f}s", flush=True)
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    return state, home


def materialize(root: Path, state: stack.StackState, home: Path, rows: int) -> Run:
    """One run of the export with all its checks, as ``dagster asset materialize`` runs it."""
    env = os.environ | {
        "BQ_ASSETS_LOCAL_DIR": str(root),
        "DAGSTER_HOME": str(home),
        "BQ_ASSETS_SAMPLE_ROWS": str(rows),
        "PYTHONPATH": str(ROOT),
    }
    log = root / f"run-{time.time_ns()}.log"
    started = time.monotonic()
    with log.open("w") as out:
        command = subprocess.Popen(
            [DAGSTER, "asset", "materialize", "-m", "bq_assets.definitions",
             "--select", f"group:{EXPORT}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        watch = Watch(
            command.pid, (state.gcs_pid, state.bigquery_pid, state.spark_pid), state.spark_pid
        ).start()
        code = command.wait()
        wall = time.monotonic() - started
        watch.stop()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    return Run(rows, wall, code == 0, _steps(home), watch, tail)


# -- the report -------------------------------------------------------------------------------


def hop_rows(run: Run) -> list[str]:
    lines = []
    for hop in HOPS:
        step = run.steps.get(f"{hop}__{EXPORT}")
        if step is None or not step.end:
            lines.append(f"  {run.rows:>10,}  {hop:<10}  (did not finish)")
            continue
        checks = [s for k, s in run.steps.items() if k.startswith(f"{hop}__{EXPORT}_") and s.end]
        checks_wall = max(s.end for s in checks) - min(s.start for s in checks) if checks else 0.0
        checks_rss = max((run.rss_mb(s) for s in checks), default=0.0)
        share = min(1.0, run.watch.emulator_cpu_between(step.start, step.end) / step.wall_s)
        rate = f"{(step.rows or run.rows) / step.wall_s:>11,.0f}" if step.wall_s else "-"
        lines.append(
            f"  {run.rows:>10,}  {hop:<10}  {step.wall_s:>7.1f}  {checks_wall:>8.1f}  "
            f"{run.rss_mb(step):>7.0f}  {checks_rss:>9.0f}  {share:>8.0%}  {rate}"
        )
    return lines


def report(runs: list[Run], small: list[float]) -> str:
    lines = [
        "",
        f"  {'rows':>10}  {'hop':<10}  {'wall s':>7}  {'checks s':>8}  {'rss MB':>7}  "
        f"{'checks MB':>9}  {'emulator':>8}  {'rows/s':>11}",
    ]
    for run in runs:
        lines += hop_rows(run)
        lines.append(
            f"  {run.rows:>10,}  {'whole run':<10}  {run.wall_s:>7.1f}  "
            f"{'':>8}  {run.max_step_rss_mb():>7.0f}  (largest step)  "
            f"{'ok' if run.ok else 'FAILED'}"
        )
        lines.append(
            f"  {run.rows:>10,}  {'Spark JVM':<10}  {'':>7}  {'':>8}  "
            f"{run.watch.jvm_peak_rss:>7.0f}  (the Databricks stand-in, peak during the run)"
        )
    if small:
        lines.append(
            f"\n  1,000-row export with all checks: {min(small):.1f} s "
            f"(runs: {', '.join(f'{s:.1f}' for s in small)} s)"
        )
    return "\n".join(lines)


def closing_line(runs: list[Run], small: list[float]) -> str:
    by_rows = {run.rows: run for run in runs}

    def e2e(rows: int) -> str:
        run = by_rows.get(rows)
        return f"{run.wall_s:.1f}" if run and run.ok else ("failed" if run else "not_measured")

    big = by_rows.get(10_000_000)
    rss = f"{big.max_step_rss_mb():.0f}" if big else "not_measured"
    jvm = f"{big.watch.jvm_peak_rss:.0f}" if big else "not_measured"
    small_s = f"{min(small):.1f}" if small else "not_measured"
    return (
        f"e2e_s_1m={e2e(1_000_000)} e2e_s_10m={e2e(10_000_000)} "
        f"e2e_rss_mb_10m={rss} e2e_jvm_rss_mb_10m={jvm} small_run_s={small_s}"
    )


def targets(runs: list[Run], small: list[float]) -> list[str]:
    notes = []
    for run in runs:
        notes.append(f"{run.rows:,} rows: {'completed' if run.ok else 'FAILED'}")
        over = [k for k, s in run.steps.items() if run.rss_mb(s) > TARGET_RSS_MB]
        notes.append(
            f"  every step <= {TARGET_RSS_MB} MB: {'met' if not over else 'NOT met ' + str(over)}"
        )
        copy = run.steps.get(f"databricks__{EXPORT}")
        if copy and copy.end:
            rate = (copy.rows or run.rows) / copy.wall_s
            verdict = "met" if rate >= TARGET_COPY_ROWS_S else "NOT met"
            notes.append(
                f"  stand-in copy >= {TARGET_COPY_ROWS_S:,} rows/s: {verdict} ({rate:,.0f})"
            )
    if small:
        verdict = "met" if min(small) <= TARGET_SMALL_RUN_S else "NOT met"
        notes.append(f"small run <= {TARGET_SMALL_RUN_S:g} s: {verdict} ({min(small):.1f} s)")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated row counts")
    parser.add_argument("--small-runs", type=int, default=2, help="1,000-row runs (0: none)")
    parser.add_argument("--workdir", type=Path, help="keep the stacks here (default: temp dir)")
    parser.add_argument(
        "--join", type=Path, help="prefix the closing line with this file's last line"
    )
    options = parser.parse_args(argv)
    sizes = [int(size) for size in options.sizes.split(",") if size]

    base = options.workdir or Path(tempfile.mkdtemp(prefix="bq-assets-e2e-"))
    runs: list[Run] = []
    small: list[float] = []
    try:
        if options.small_runs:
            root = base / "small"
            state, home = _prepare(root, 1_000)
            try:
                for _ in range(options.small_runs):
                    run = materialize(root, state, home, 1_000)
                    if not run.ok:
                        print(f"bench-e2e: the small run failed:\n{run.tail}", flush=True)
                        break
                    small.append(run.wall_s)
                    print(f"bench-e2e: 1,000 rows in {run.wall_s:.1f}s", flush=True)
            finally:
                stack.down(root)
        for rows in sizes:
            root = base / f"rows-{rows}"
            state, home = _prepare(root, rows)
            try:
                print(f"bench-e2e: {rows:,} rows through all four hops ...", flush=True)
                run = materialize(root, state, home, rows)
                runs.append(run)
                print(
                    f"bench-e2e: {rows:,} rows {'done' if run.ok else 'FAILED'} in {run.wall_s:.1f}s",
                    flush=True,
                )
                if not run.ok:
                    print(run.tail, flush=True)
            finally:
                stack.down(root)
                shutil.rmtree(root, ignore_errors=True)  # 10M rows leave GBs behind
    finally:
        if options.workdir is None:
            shutil.rmtree(base, ignore_errors=True)

    print(report(runs, small))
    print("\n" + "\n".join(targets(runs, small)))
    joined = ""
    if options.join and options.join.exists():
        lines = options.join.read_text().strip().splitlines()
        joined = (lines[-1].removeprefix("bench: ") + " ") if lines else ""
    print(f"\nbench-e2e: {joined}{closing_line(runs, small)}")
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
