"""How a merge's statement job is run (``bigquery_jobs.run_statement``), against a named fake of
BigQuery's jobs API: a deterministic job id per generation, a running job waited for (never a
second one started beside it), a finished one followed by a new generation, a 409 on a retried
insert taken for the job it is, and BigQuery's errors with the right retry rule.

The fake asserts the documented form: the client generates the job id "to allow reliable retry
of the jobs.insert call", so the client's own job retry, which would insert the id again, is
off; a job is DONE whether it succeeded or not, its error in ``status.errorResult``
(https://cloud.google.com/bigquery/docs/running-jobs,
https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobStatus)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
from google.api_core import exceptions as gexc
from google.cloud.bigquery.job import DmlStats

from bq_assets.engine.bigquery_jobs import run_statement
from bq_assets.errors import BqAssetsError

LOG = logging.getLogger("test")
SQL = "MERGE `p.d.t` AS target USING `p.s.t` AS source ON target.`id` = source.`id` ..."


@dataclass
class FakeStatementJob:
    """A query job as the client library exposes it."""

    job_id: str
    state: str = "DONE"
    error_result: dict | None = None
    poll_fails: bool = False
    waited: int = 0
    location: str = "US"
    dml_stats: DmlStats | None = field(default_factory=lambda: DmlStats(2, 0, 3))
    num_dml_affected_rows: int = 5
    total_bytes_processed: int = 1_000
    total_bytes_billed: int = 10_485_760
    slot_millis: int = 42

    @property
    def errors(self) -> list[dict] | None:
        return [self.error_result] if self.error_result else None

    def result(self, retry=None, timeout=None):
        self.waited += 1
        if self.poll_fails:
            raise gexc.NotFound(f"Not found: Job {self.job_id}")
        self.state = "DONE"
        if self.error_result:
            raise gexc.BadRequest(self.error_result["message"])
        return iter(())


class FakeStatementJobs:
    """FAKE of BigQuery's jobs API (``jobs.get``, ``jobs.insert`` of a query), as the client
    library calls it; records each insert."""

    def __init__(self, *existing: FakeStatementJob, conflict: bool = False) -> None:
        self.jobs = {job.job_id: job for job in existing}
        self.inserted: list[str] = []
        self.conflict = conflict

    def get_job(self, job_id, project=None, location=None, retry=None):
        if job_id not in self.jobs:
            raise gexc.NotFound(f"Not found: Job {project}:{location}.{job_id}")
        return self.jobs[job_id]

    def query(self, sql, job_config=None, job_id=None, project=None, location=None, **kwargs):
        assert job_id and kwargs.get("job_retry", "unset") is None, "our ids, no job retry"
        assert sql == SQL
        self.inserted.append(job_id)
        job = FakeStatementJob(job_id, state="RUNNING")
        self.jobs[job_id] = job
        if self.conflict:  # the first insert created it; its answer was lost, the retry: 409
            raise gexc.Conflict(f"Already Exists: Job {project}:{location}.{job_id}")
        return job


def run(jobs: FakeStatementJobs):
    return run_statement(jobs, SQL, "base", "p", "US", "the MERGE", LOG)  # type: ignore[arg-type]


def test_a_first_statement_is_inserted_with_generation_1_and_reports_what_it_did() -> None:
    jobs = FakeStatementJobs()
    result = run(jobs)
    assert jobs.inserted == ["base_1"]
    assert (result.inserted_rows, result.updated_rows, result.deleted_rows) == (2, 3, 0)
    assert (result.affected_rows, result.bytes_processed, result.slot_ms) == (5, 1_000, 42)


def test_a_running_statement_is_waited_for_never_started_twice() -> None:
    running = FakeStatementJob("base_1", state="RUNNING")
    jobs = FakeStatementJobs(running)
    assert run(jobs).job_id == "base_1"
    assert jobs.inserted == [] and running.waited == 1


@pytest.mark.parametrize("error", [None, {"reason": "invalidQuery", "message": "bad"}])
def test_a_finished_statement_gets_a_new_generation(error: dict | None) -> None:
    jobs = FakeStatementJobs(FakeStatementJob("base_1", error_result=error))
    assert run(jobs).job_id == "base_2"
    assert jobs.inserted == ["base_2"]


def test_an_insert_answered_409_is_the_job_already_inserted() -> None:
    jobs = FakeStatementJobs(conflict=True)
    assert run(jobs).job_id == "base_1"
    assert jobs.inserted == ["base_1"]


@pytest.mark.parametrize(("reason", "retryable"), [("invalidQuery", False), ("backendError", True)])
def test_a_failed_statement_says_bigquery_s_errors_and_whether_a_retry_helps(
    reason: str, retryable: bool
) -> None:
    failing = FakeStatementJob(
        "base_1", state="RUNNING", error_result={"reason": reason, "message": "no"}
    )
    jobs = FakeStatementJobs(failing)
    with pytest.raises(BqAssetsError) as raised:
        run(jobs)
    assert f"[{reason}]" in str(raised.value) and "nothing of it was applied" in str(raised.value)
    assert raised.value.retryable is retryable


def test_a_status_that_cannot_be_read_while_it_runs_is_retryable_and_never_taken_for_done() -> None:
    jobs = FakeStatementJobs(FakeStatementJob("base_1", state="RUNNING", poll_fails=True))
    with pytest.raises(BqAssetsError, match="was still RUNNING") as raised:
        run(jobs)
    assert raised.value.retryable
