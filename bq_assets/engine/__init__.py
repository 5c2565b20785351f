"""The export engine: a snapshot in, BigQuery-ready objects in GCS out. No Dagster in here.

Each concern has a module of its own, so a new format, a new layout or a new retention rule
has one obvious place:

* ``planning``  — how many shards, of which rows, on how many workers;
* ``snapshot``  — reading the Parquet snapshot a range of rows at a time (and fetching it);
* ``writers``   — one shard as CSV or Parquet; ``compression`` — gzip as the bytes are written;
* ``upload``    — resumable uploads verified end to end by crc32c, and deletes;
* ``manifest``  — what a run wrote (the BigQuery hop's only input), ``_SUCCESS``, and the one
  check of the objects in GCS against it;
* ``layout``    — object names from the spec's template, and the pattern that finds runs again;
* ``retention`` — which earlier runs' objects to delete;
* ``export``    — the above put together: one run's export, idempotent per run;
* ``scans``     — the snapshot checks' scans, in bounded memory;
* ``bigquery_jobs`` / ``bigquery_load`` — the load into BigQuery, atomic and reattachable;
* ``databricks_sql`` — the Databricks statements, drift reading, publishing with drift checks;
* ``key_checksum`` — the key checksum both BigQuery and Databricks compute;
* ``deliveries`` — files another system delivered: completeness, rows, their manifest.

The hops in ``bq_assets.stages`` call these with the clients their resources make.
"""
