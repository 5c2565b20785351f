"""The code location: ``defs``, built from the export specs for the current environment.

Loading fails fast, with a message naming the file and field, when a spec or the environment
is invalid (``ExportSpecError`` / ``ConfigurationError``).
"""

from __future__ import annotations

import os

import dagster as dg

from bq_assets.exports import exports_dir, load_specs
from bq_assets.factory import build_definitions
from bq_assets.settings import build_resources, environment


def _schedule_status() -> dg.DefaultScheduleStatus:
    default = "running" if environment() == "prod" else "stopped"
    status = os.environ.get("BQ_ASSETS_SCHEDULES", default)
    return (
        dg.DefaultScheduleStatus.RUNNING
        if status == "running"
        else dg.DefaultScheduleStatus.STOPPED
    )


defs = build_definitions(load_specs(exports_dir()), build_resources(), _schedule_status())
