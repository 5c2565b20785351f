"""The export engine's rooms: each small module does one thing, and the house keeps its rules
(the engine imports no Dagster; production code never imports the local stack)."""

import ast
import gzip
import io
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import bq_assets
from bq_assets.engine.compression import GzipSink
from bq_assets.engine.manifest import Manifest, Shard
from bq_assets.engine.scans import SAMPLE, null_counts, primary_key_report

PACKAGE = Path(bq_assets.__file__).parent
ENGINE_MODULES = sorted(
    f"bq_assets.engine.{path.stem}" for path in (PACKAGE / "engine").glob("*.py")
)
SOURCE_MODULES = sorted(
    f"bq_assets.sources.{path.stem}" for path in (PACKAGE / "sources").glob("*.py")
)
#: The only module outside local/ allowed to import it: the wiring.
WIRING = {"settings.py"}


def _loaded_after_importing(modules: list[str]) -> set[str]:
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(' '.join(sys.modules))"
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(output.split())


def test_the_engine_imports_no_dagster() -> None:
    loaded = _loaded_after_importing([*ENGINE_MODULES, *SOURCE_MODULES])
    assert "dagster" not in loaded
    assert len(ENGINE_MODULES) >= 10


def test_production_code_never_imports_the_local_stack() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "local" or str(relative) in WIRING:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{relative}: {n}" for n in names if n.startswith("bq_assets.local")]
    assert offenders == []
    production = [
        "bq_assets.factory",
        "bq_assets.resources",
        "bq_assets.schedules",
        "bq_assets.translator",
    ]
    assert not {m for m in _loaded_after_importing(production) if m.startswith("bq_assets.local")}


def test_gzip_sink_output_is_gzip_and_the_same_bytes_every_time() -> None:
    def compressed() -> bytes:
        raw = io.BytesIO()
        sink = GzipSink(raw, level=6)
        sink.write(b"id,name\n")
        sink.write(b'1,"a"\n' * 1000)
        sink.close()
        sink.close()  # closing twice writes the trailer once
        return raw.getvalue()

    first = compressed()
    assert gzip.decompress(first) == b"id,name\n" + b'1,"a"\n' * 1000
    assert compressed() == first  # no timestamp in the header: same rows, same crc32c


def test_a_manifest_reads_back_exactly_as_written() -> None:
    manifest = Manifest(
        export="orders",
        run_id="r1",
        prefix="gs://b/exports/orders/r1/",
        rows=3,
        shards=[Shard("gs://b/exports/orders/r1/part-00000.csv.gz", 3, 42, "AAAAAA==")],
        bigquery_schema=[{"name": "id", "type": "INTEGER", "mode": "NULLABLE"}],
        csv={"header": True},
    )
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.uris == ["gs://b/exports/orders/r1/part-00000.csv.gz"]


def _snapshot(tmp_path: Path, table: pa.Table) -> Path:
    path = tmp_path / "snapshot.parquet"
    pq.write_table(table, path)
    return path


def test_the_key_scan_counts_duplicated_and_null_keys_with_a_sample(tmp_path: Path) -> None:
    ids = [1, 2, 2, 3, 3, 3, None, *list(range(10, 20))]
    snapshot = _snapshot(tmp_path, pa.table({"id": ids, "name": ["x"] * len(ids)}))
    report = primary_key_report(snapshot, ["id"])
    assert (report.null_keys, report.duplicated_keys, report.passed) == (1, 2, False)
    assert report.duplicate_sample[:2] == [["3", "3"], ["2", "2"]]  # most repeated first
    assert len(report.duplicate_sample) <= SAMPLE


def test_the_key_scan_of_a_clean_snapshot_passes_and_spills_instead_of_growing(
    tmp_path: Path,
) -> None:
    rows = 2_000_000  # a GROUP BY of this many keys needs more than the scan's memory limit
    snapshot = _snapshot(
        tmp_path, pa.table({"a": pa.array(range(rows)), "b": pa.array(range(rows))})
    )
    report = primary_key_report(snapshot, ["a", "b"])
    assert report.passed and report.duplicate_sample == []


def test_null_counts_per_required_column(tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path, pa.table({"a": [1, None, None], "b": ["x", "y", None]}))
    assert null_counts(snapshot, ["a", "b"]) == {"a": 2, "b": 1}
