"""Export specs: one ``<name>.sql`` + ``<name>.yaml`` per export (see ``spec.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from bq_assets.exports.fields import ExportSpecError
from bq_assets.exports.spec import ExportSpec, load_specs

SHIPPED_EXPORTS_DIR = Path(__file__).parent


def exports_dir() -> Path:
    """The folder the code location reads specs from (``BQ_ASSETS_EXPORTS_DIR``, default: shipped)."""
    return Path(os.environ.get("BQ_ASSETS_EXPORTS_DIR", SHIPPED_EXPORTS_DIR))


__all__ = ["SHIPPED_EXPORTS_DIR", "ExportSpec", "ExportSpecError", "exports_dir", "load_specs"]
