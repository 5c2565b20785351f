#!/bin/sh
# Per-pool step limits of a bq_assets deployment. Dagster keeps limits of named pools in the
# instance's database (the `concurrency: pools:` section of dagster.yaml holds only the default),
# so they are set with the CLI, against the instance of $DAGSTER_HOME. Idempotent: run it on
# every deploy (docker-compose.yaml runs it before the daemon starts).
set -eu
dagster instance concurrency set source "${BQ_ASSETS_POOL_SOURCE:-2}"
dagster instance concurrency set gcs "${BQ_ASSETS_POOL_GCS:-2}"
dagster instance concurrency set bigquery "${BQ_ASSETS_POOL_BIGQUERY:-4}"
dagster instance concurrency set databricks "${BQ_ASSETS_POOL_DATABRICKS:-2}"
