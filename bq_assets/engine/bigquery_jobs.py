"""BigQuery jobs that run once per piece of work: deterministic job ids, reattached to on a
retry, waited for with a deadline, failed with BigQuery's own errors and the right retry rule."""

import concurrent.futures
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery
from urllib3.exceptions import NewConnectionError

from bq_assets.engine.log import Log
from bq_assets.errors import BqAssetsError

Job = bigquery.job.LoadJob | bigquery.job.CopyJob

MAX_GENERATIONS = 20
# A load or copy job that has not finished by then fails the step (and its retry re-attaches).
JOB_TIMEOUT_S = 3600.0
# A read-only query (a row count) that has not answered by then fails the step (retryable).
QUERY_TIMEOUT_S = 600.0


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, a urllib3 error's reason, args)."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        pending += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]


def refused_connection(exc: BaseException) -> bool:
    """Was no connection made at all (refused, or the host not found)? Nothing was sent."""
    return any(isinstance(e, ConnectionRefusedError | NewConnectionError) for e in _causes(exc))


def _transient(exc: Exception) -> bool:
    # No public accessor exposes the library's predicate; DEFAULT_RETRY carries it.
    library_rule = bigquery.DEFAULT_RETRY._predicate
    return library_rule(exc) and not refused_connection(exc)


#: Only transient failures are retried, with exponential backoff for at most 300 s: the client
#: library's own rule (google.cloud.bigquery.retry.DEFAULT_RETRY): the error reasons
#: rateLimitExceeded (which BigQuery answers with HTTP 403), backendError, internalError and
#: badGateway, HTTP 429/500/502/503 and dropped connections. One exception: a connection that
#: was never made (refused, unknown host) is not retried for 300 s per call; it fails the call
#: at once, as "BigQuery at <endpoint> is unreachable", and the step's own retry policy, with
#: its backoff, tries again (``translator.NETWORK_RETRY``). A retried job insert is safe: job
#: ids are ours, and an insert that had reached BigQuery answers 409 (``start_or_reattach``).
TRANSIENT: Retry = bigquery.DEFAULT_RETRY.with_deadline(300.0).with_predicate(_transient)

#: Job error reasons that a new attempt can fix: BigQuery's own failures and rate limits
#: (https://cloud.google.com/bigquery/docs/error-messages: "retry" for these). Any other reason
#: (invalid data, a bad schema, access denied, a missing object) fails the step at once.
RETRYABLE_REASONS = frozenset(
    {"backendError", "internalError", "rateLimitExceeded", "jobBackendError", "jobInternalError"}
)

#: Table modification times a little after the job's end still count as the job's own write.
_SAME_WRITE = dt.timedelta(seconds=5)


def retryable(job: Job) -> bool:
    """Whether the failed job's error is one a new attempt can fix."""
    return (job.error_result or {}).get("reason") in RETRYABLE_REASONS


def start_or_reattach(
    client: bigquery.Client,
    base: str,
    project: str,
    location: str,
    start: Callable[[str], Job],
    log: Log,
) -> Job:
    """The job ``<base>_<generation>``: reattach to a running one, or to a finished one whose
    table is still as it left it; start a new generation after a failed one, or when its table
    has since been deleted or changed. A retried step therefore never runs the same work twice,
    and a repair (re-materializing after the table went missing or was altered) loads again."""
    for generation in range(1, MAX_GENERATIONS + 1):
        job_id = f"{base}_{generation}"
        try:
            job = client.get_job(job_id, project=project, location=location, retry=TRANSIENT)
        except gexc.NotFound:
            log.info(f"starting job {job_id}")
            return _started(client, job_id, project, location, start, log)
        if job.state == "DONE" and job.error_result:
            log.info(f"job {job_id} already failed; starting generation {generation + 1}")
            continue
        if job.state == "DONE" and not output_unchanged(client, job):
            log.info(
                f"job {job_id} finished, but its table {table_id_of(job.destination)} was deleted "
                f"or changed since; starting generation {generation + 1}"
            )
            continue
        log.info(f"reattaching to job {job_id} (state {job.state})")
        return job
    raise BqAssetsError(f"{MAX_GENERATIONS} generations of job {base} failed for one run.")


def _started(
    client: bigquery.Client,
    job_id: str,
    project: str,
    location: str,
    start: Callable[[str], Job],
    log: Log,
) -> Job:
    """``start(job_id)``, or the job already inserted under that id: the client retries a job
    insert whose answer was lost (a dropped connection, a 5xx), and BigQuery answers the retry
    409 Already Exists when the first insert had created the job. That job is ours (the id is
    deterministic), so it is reattached to, not started again and not reported as a failure
    (https://cloud.google.com/bigquery/docs/running-jobs: generate the job id on the client
    "to allow reliable retry of the jobs.insert call")."""
    try:
        return start(job_id)
    except gexc.Conflict:
        log.info(f"job {job_id} already exists (its insert was retried); reattaching to it")
    try:
        return client.get_job(job_id, project=project, location=location, retry=TRANSIENT)
    except gexc.NotFound:
        # BigQuery can answer 404 for a moment right after a 409 (googleapis/python-bigquery
        # issue 2134); the step's retry finds the job.
        raise BqAssetsError(
            f"BigQuery said job {job_id} (location {location}) already exists but does not "
            "show it yet; the step's retry reattaches to it.",
            retryable=True,
        ) from None


def table_id_of(table: bigquery.TableReference | None) -> str:
    return f"{table.project}.{table.dataset_id}.{table.table_id}" if table else "(unknown)"


def output_unchanged(client: bigquery.Client, job: Job) -> bool:
    """Does the finished job's table still exist, unmodified since the job (and our own label
    update right after it) ended? A staged load's table is gone once published: its output then
    lives on in the table of its publish job (``<load job id>_publish_<generation>``)."""
    table = existing_table(client, job.destination)
    if table is None:
        publish = _published_by(client, job) if isinstance(job, bigquery.LoadJob) else None
        return (
            publish is not None
            and output_unchanged(client, publish)
            # A DML change need not show in the table's modification time (the emulator's does
            # not move): a replaced table must also still hold exactly the loaded rows. (An
            # appended one holds more; loading it again would append twice.)
            and (
                job.output_rows is None
                or publish.write_disposition == "WRITE_APPEND"
                or count_rows(client, table_id_of(publish.destination)) == job.output_rows
            )
        )
    if table.modified is None or job.ended is None:
        return True
    return table.modified <= job.ended + _SAME_WRITE


def existing_table(
    client: bigquery.Client, table: bigquery.TableReference | str | None
) -> bigquery.Table | None:
    """The table, or None when there is none (yet)."""
    if table is None:
        return None
    try:
        return client.get_table(table, retry=TRANSIENT)
    except gexc.NotFound:
        return None


def _published_by(client: bigquery.Client, load: bigquery.LoadJob) -> bigquery.CopyJob | None:
    """The successful publish (copy) job of a staged load, if any."""
    for generation in range(1, MAX_GENERATIONS + 1):
        job_id = f"{load.job_id}_publish_{generation}"
        try:
            job = client.get_job(
                job_id, project=load.project, location=load.location, retry=TRANSIENT
            )
        except gexc.NotFound:
            return None
        if job.state == "DONE" and not job.error_result:
            return job
    return None


def _describe_errors(job: Job) -> str:
    errors = job.errors or ([job.error_result] if job.error_result else [])
    lines = []
    for error in errors:
        where = f" {error['location']}" if error.get("location") else ""
        lines.append(f"  - [{error.get('reason', '?')}]{where}: {error.get('message', '')}")
    return "\n".join(lines)


def wait_for(job: Job, table_id: str, location: str, table_existed: bool) -> None:
    """Wait for the job, at most ``JOB_TIMEOUT_S``; a failed job raises ``BqAssetsError`` with
    BigQuery's errors, retryable only for the reasons in ``RETRYABLE_REASONS``.

    Returns only once BigQuery has said the job is DONE without an error. A job whose status
    cannot be read (a poll the client does not retry, or one retried past its deadline) is a
    retryable error naming the job, never taken for a finished one: the job may still be running,
    and what it writes must not be read (published) before it is done. The step's retry then
    reattaches to the job by its id."""
    try:
        job.result(retry=TRANSIENT, timeout=JOB_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise BqAssetsError(
            f"BigQuery job {job.job_id} (location {job.location or location}) for {table_id} "
            f"did not finish within {JOB_TIMEOUT_S:g} s (JOB_TIMEOUT_S), or its status could "
            "not be read in that time; nothing was published. The step's retry reattaches to it.",
            retryable=True,
        ) from None
    except Exception as exc:
        if job.state != "DONE":
            raise still_running_error(job, table_id, location, exc) from None
        # A DONE job's own errors are raised as an exception too: read below, from the job.
    if job.error_result:
        kind = "load" if isinstance(job, bigquery.LoadJob) else "copy"
        kept = "the table keeps its previous data" if table_existed else "the table was not created"
        raise BqAssetsError(
            f"BigQuery {kind} job {job.job_id} (location {job.location or location}) for "
            f"{table_id} failed; {kept}. Errors:\n{_describe_errors(job)}",
            retryable=retryable(job),
            metadata={
                "job_id": job.job_id,
                "location": job.location or location,
                "table": table_id,
                "errors": job.errors or [job.error_result],
            },
        )


def still_running_error(
    job: Job | bigquery.QueryJob, table_id: str, location: str, exc: BaseException
) -> BqAssetsError:
    """The error for a job whose status could not be read before it was DONE: retryable (the
    step's retry reattaches, or starts an idempotent publish again), nothing published yet."""
    message = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return BqAssetsError(
        f"BigQuery job {job.job_id} (location {job.location or location}) for {table_id} was "
        f"still {job.state or 'starting'} when its status could no longer be read "
        f"({type(exc).__name__}: {message[0] if message else ''}); nothing was published. The "
        "step's retry reattaches to the job.",
        retryable=True,
        metadata={"job_id": job.job_id, "location": job.location or location, "table": table_id},
    )


def query_rows(
    client: bigquery.Client, sql: str, config: bigquery.QueryJobConfig | None = None
) -> list[bigquery.Row]:
    """The rows of a read-only query, waited for at most ``QUERY_TIMEOUT_S`` (the client waits
    forever by default); a query that outlives it is a retryable ``BqAssetsError``."""
    job = client.query(sql, job_config=config, retry=TRANSIENT)
    try:
        return list(job.result(retry=TRANSIENT, timeout=QUERY_TIMEOUT_S))
    except concurrent.futures.TimeoutError:
        raise BqAssetsError(
            f"BigQuery query job {job.job_id} did not answer within {QUERY_TIMEOUT_S:g} s "
            f"(QUERY_TIMEOUT_S): {sql[:200]}",
            retryable=True,
        ) from None


def count_rows(client: bigquery.Client, table_id: str) -> int:
    """``COUNT(*)`` of the table: exact right after a publish (the emulator's ``num_rows`` is
    stale after a copy job; BigQuery answers this from metadata, without scanning). Read-only;
    waited for at most ``QUERY_TIMEOUT_S``."""
    ((count,),) = query_rows(client, f"SELECT COUNT(*) FROM `{table_id}`")
    return int(count)


@dataclass(frozen=True)
class StatementResult:
    """What BigQuery reports of a finished statement job (a DML statement or script): which job,
    the rows it changed in total (``numDmlAffectedRows``) and per kind where BigQuery reports
    them (``dmlStats``: inserted, updated, deleted; the emulator does not), and what it cost
    (bytes processed and billed, slot-milliseconds; the emulator reports 0 or nothing).
    https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobStatistics2"""

    job_id: str
    location: str
    affected_rows: int | None
    inserted_rows: int | None
    updated_rows: int | None
    deleted_rows: int | None
    bytes_processed: int | None
    bytes_billed: int | None
    slot_ms: int | None

    @classmethod
    def of(cls, job: bigquery.QueryJob, location: str) -> "StatementResult":
        stats = job.dml_stats
        return cls(
            job_id=job.job_id,
            location=job.location or location,
            affected_rows=job.num_dml_affected_rows,
            inserted_rows=stats.inserted_row_count if stats else None,
            updated_rows=stats.updated_row_count if stats else None,
            deleted_rows=stats.deleted_row_count if stats else None,
            bytes_processed=job.total_bytes_processed,
            bytes_billed=job.total_bytes_billed,
            slot_ms=job.slot_millis,
        )


def run_statement(
    client: bigquery.Client,
    sql: str,
    base: str,
    project: str,
    location: str,
    what: str,
    log: Log,
    config: bigquery.QueryJobConfig | None = None,
) -> StatementResult:
    """Run ``sql`` (a DML statement or a script) as the job ``<base>_<generation>`` and wait for
    it, at most ``JOB_TIMEOUT_S``; ``what`` names it in logs and errors.

    A generation that is still running (an earlier attempt of the step lost track of it) is
    waited for, so two never run at once; a finished one, failed or not, gets a new generation:
    ``sql`` must be idempotent (a MERGE of the same rows is). A failed job raises a
    ``BqAssetsError`` with BigQuery's errors, retryable only for ``RETRYABLE_REASONS`` (BigQuery
    applies a DML statement all or nothing); a status that cannot be read while the job runs is
    a retryable error, never taken for a finished job."""
    for generation in range(1, MAX_GENERATIONS + 1):
        job_id = f"{base}_{generation}"
        try:
            job = client.get_job(job_id, project=project, location=location, retry=TRANSIENT)
        except gexc.NotFound:
            log.info(f"starting job {job_id}: {what}")
            job = _start_statement(client, sql, job_id, project, location, config)
            break
        if job.state != "DONE":
            log.info(f"reattaching to job {job_id} (state {job.state}): {what}")
            break
    else:
        raise BqAssetsError(f"{MAX_GENERATIONS} generations of job {base} ran for one run.")
    _wait_for_statement(job, location, what)
    return StatementResult.of(job, location)


def _start_statement(
    client: bigquery.Client,
    sql: str,
    job_id: str,
    project: str,
    location: str,
    config: bigquery.QueryJobConfig | None,
) -> bigquery.QueryJob:
    """Insert the job; an insert retried after its answer was lost is answered 409 by BigQuery
    when the first one created it: that job is ours (the id is), so it is the one returned."""
    try:
        return client.query(
            sql, job_config=config, job_id=job_id, project=project, location=location,
            retry=TRANSIENT, job_retry=None,
        )  # fmt: skip
    except gexc.Conflict:
        return client.get_job(job_id, project=project, location=location, retry=TRANSIENT)


def _wait_for_statement(job: bigquery.QueryJob, location: str, what: str) -> None:
    try:
        job.result(retry=TRANSIENT, timeout=JOB_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise BqAssetsError(
            f"BigQuery job {job.job_id} (location {job.location or location}), {what}, did not "
            f"finish within {JOB_TIMEOUT_S:g} s (JOB_TIMEOUT_S); the step's retry waits for it.",
            retryable=True,
        ) from None
    except Exception as exc:
        if job.state != "DONE":
            raise BqAssetsError(
                f"BigQuery job {job.job_id} (location {job.location or location}), {what}, was "
                f"still {job.state or 'starting'} when its status could no longer be read "
                f"({type(exc).__name__}); the step's retry waits for it.",
                retryable=True,
            ) from None
    if job.error_result:
        raise BqAssetsError(
            f"BigQuery job {job.job_id} (location {job.location or location}), {what}, failed; "
            f"BigQuery applies a statement all or nothing, so nothing of it was applied. "
            f"Errors:\n{_describe_errors(job)}",
            retryable=retryable(job),
            metadata={
                "job_id": job.job_id,
                "location": job.location or location,
                "errors": job.errors or [job.error_result],
            },
        )
