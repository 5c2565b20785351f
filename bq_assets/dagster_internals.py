"""What this project takes from Dagster's private modules, in one place, and why.

Dagster 1.13 has no public API for these; should one appear, only this module changes.

* **Cron arithmetic.** A freshness policy for a custom cron must not be wider than the cron's
  smallest interval (Dagster refuses it), and the latest-partition check asks when a schedule
  last ticked. Dagster evaluates schedules with its own cron implementation
  (``dagster._utils.schedules``); using the same one makes "when did it tick" the answer the
  daemon gives, DST included, with no second cron library to disagree with it.
* **Modules a step's process preloads.** The multiprocess executor's fork server imports them
  once instead of in every step (``EXECUTOR_CONFIG`` in ``bq_assets.factory``): the code
  location, and the Dagster storage a step opens its instance with (SQLAlchemy, alembic;
  0.7 s per step otherwise, see docs/performance.md). They are module *names* handed to the
  executor's public ``preload_modules`` setting; nothing here imports them.
* **The implicit asset job, reconstructable.** ``make demo`` runs ``__ASSET_JOB`` (what the UI's
  "Materialize all" runs, so its runs match the UI's job) through the job's own multiprocess
  executor, whose step processes must load the job again from the module. ``dg.reconstructable``
  refuses that reserved name; ``ReconstructableRepository`` is how Dagster's own CLI does it.
"""

from __future__ import annotations

import datetime as dt

from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
from dagster._utils.schedules import get_smallest_cron_interval, reverse_cron_string_iterator

STEP_PRELOAD_MODULES = [
    "bq_assets.definitions",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log",
    "dagster._core.storage.runs",
    "dagster._core.storage.schedules",
    "dagster._core.storage.root",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.run_coordinator",
    "dagster._core.launcher",
]


def smallest_cron_interval(cron: str) -> dt.timedelta:
    """The shortest time between two ticks of ``cron``."""
    return get_smallest_cron_interval(cron)


def last_tick_at_or_before(when: dt.datetime, cron: str, timezone: str) -> dt.datetime:
    """The latest tick of ``cron`` in ``timezone`` at or before ``when``."""
    return next(reverse_cron_string_iterator(when.timestamp(), cron, timezone))


def reconstructable_asset_job(module: str, attribute: str = "defs") -> ReconstructableJob:
    """``__ASSET_JOB`` of the ``Definitions`` at ``module.attribute``, loadable again from the
    module by every step process of the multiprocess executor (as the UI's run worker does)."""
    return ReconstructableRepository.for_module(module, attribute).get_reconstructable_job(
        "__ASSET_JOB"
    )
