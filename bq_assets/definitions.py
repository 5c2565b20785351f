"""The code location: ``defs``, built from the export specs for the current environment.

Loading fails fast, with a message naming the file and field, when a spec or the environment
is invalid (``ExportSpecError`` / ``ConfigurationError``).
"""

from bq_assets.exports import exports_dir, load_specs
from bq_assets.factory import build_definitions
from bq_assets.settings import build_resources, check_specs_for_environment, schedule_status

defs = build_definitions(
    check_specs_for_environment(load_specs(exports_dir())), build_resources(), schedule_status()
)
