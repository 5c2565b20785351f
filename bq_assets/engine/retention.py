"""Which earlier runs' objects go: all but the newest ``objects.keep_runs`` complete runs, and
the leftovers of runs that finished without completing. Decided by run status, never by file
times; the current run and runs that may still be writing are never touched."""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from bq_assets.engine.layout import ObjectLayout
from bq_assets.engine.manifest import SUCCESS_MARKER
from bq_assets.engine.upload import delete_objects


@dataclass
class RunObjects:
    """The objects of one earlier run of an export, found under its run prefix."""

    prefix: str
    run_id: str
    blobs: list[storage.Blob] = field(default_factory=list)
    completed: dt.datetime | None = None  # when its _SUCCESS was written, if ever


@dataclass(frozen=True)
class Tidied:
    old: list[str]  # prefixes of complete runs beyond keep_runs, deleted
    abandoned: list[str]  # prefixes of finished runs that never completed, deleted
    in_flight: list[str]  # prefixes without _SUCCESS of runs not known to be finished, kept

    def summary(self) -> list[str]:
        """One log line per kind of prefix, for the run's log."""
        lines = []
        if self.old:
            lines.append(f"deleted {len(self.old)} older run prefix(es): {', '.join(self.old)}")
        if self.abandoned:
            lines.append(
                f"deleted the partial objects of {len(self.abandoned)} failed run(s): "
                + ", ".join(self.abandoned)
            )
        if self.in_flight:
            lines.append(
                "left alone, as their runs may still be writing: " + ", ".join(self.in_flight)
            )
        return lines


def tidy_runs(
    bucket: storage.Bucket,
    layout: ObjectLayout,
    keep: int,
    run_finished: Callable[[str], bool],
    retry: Retry = DEFAULT_RETRY,
) -> Tidied:
    """Delete the objects of all but the newest ``keep`` complete runs (this one included), and
    those of runs that finished without completing (``run_finished(run_id)``); never the current
    run's, nor those of a run that may still be writing. Runs are told apart by the template's
    ``{run}`` folder and are complete when they hold ``_SUCCESS``. Idempotent."""
    pattern = layout.run_prefix_pattern()
    runs: dict[str, RunObjects] = {}
    for blob in bucket.list_blobs(prefix=layout.export_prefix, retry=retry):
        match = pattern.match(blob.name)
        if match is None or match.group(0) == layout.run_prefix:
            continue
        run = runs.setdefault(match.group(0), RunObjects(match.group(0), match["run"]))
        run.blobs.append(blob)
        if blob.name == run.prefix + SUCCESS_MARKER:
            run.completed = blob.time_created
    complete = sorted(
        (run for run in runs.values() if run.completed), key=lambda run: run.completed, reverse=True
    )
    old = complete[max(keep - 1, 0) :]
    unfinished = [run for run in runs.values() if not run.completed]
    abandoned = [run for run in unfinished if run_finished(run.run_id)]
    delete_objects((blob for run in old + abandoned for blob in run.blobs), retry)
    where = f"gs://{bucket.name}/"
    return Tidied(
        old=[where + run.prefix for run in old],
        abandoned=[where + run.prefix for run in abandoned],
        in_flight=[where + run.prefix for run in unfinished if run not in abandoned],
    )
