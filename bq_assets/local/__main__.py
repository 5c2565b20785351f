"""``python -m bq_assets.local up | down | status``: manage the local cloud stack."""

from __future__ import annotations

import argparse
import sys

from bq_assets.local import stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bq_assets.local", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    root = stack.local_dir()
    try:
        if args.command == "up":
            state = stack.up(root)
            print(f"local stack up under {root}")
            print(f"  GCS (fake-gcs-server): {state.gcs_endpoint}  bucket gs://{state.bucket}")
            print(
                f"  BigQuery (bqemulator): {state.bigquery_endpoint}  gRPC {state.bigquery_grpc_target}"
            )
            print(f"  Databricks (Apache Spark stand-in): {state.spark_remote}")
        elif args.command == "down":
            print("local stack stopped" if stack.down(root) else "local stack was not running")
        else:
            state = stack.read_state(root)
            healthy = stack.is_healthy(state)
            print(f"local stack under {root}: {'healthy' if healthy else 'NOT healthy'}")
            print(f"  GCS {state.gcs_endpoint} (pid {state.gcs_pid})")
            print(f"  BigQuery {state.bigquery_endpoint} (pid {state.bigquery_pid})")
            print(
                f"  Databricks stand-in (Spark Connect) {state.spark_remote} (pid {state.spark_pid})"
            )
            return 0 if healthy else 1
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
