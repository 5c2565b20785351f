"""The fault suite's report: one row per fault case, printed after the run.

A test marked ``faults`` takes the ``fault`` fixture, names its case and expected behaviour,
and fills in what it observed and the rows it lost or duplicated. The session ends with a
table and one line ``faults: <n> passed, <n> failed, rows_lost=<n> rows_duplicated=<n>
secrets_leaked=<n>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass
class FaultRecord:
    case: str = ""
    expected: str = ""
    observed: str = "(test did not reach its observation)"
    rows_lost: int = 0
    rows_duplicated: int = 0
    secrets_leaked: int = 0
    outcome: str = "failed"
    notes: list[str] = field(default_factory=list)


_RECORDS: list[FaultRecord] = []


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> FaultRecord:
    record = FaultRecord(case=request.node.name.removeprefix("test_"))
    request.node.fault_record = record
    _RECORDS.append(record)
    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    record: FaultRecord | None = getattr(item, "fault_record", None)
    if record is None:
        return
    if report.when == "call":
        record.outcome = "passed" if report.passed else "failed"
    elif report.failed:
        record.outcome = "failed"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def pytest_terminal_summary(terminalreporter) -> None:
    if not _RECORDS:
        return
    write = terminalreporter.write_line
    write("")
    header = (
        f"{'case':<44} {'expected':<44} {'observed':<56} {'lost':>4} {'dup':>4} {'leak':>4} result"
    )
    write(header)
    write("-" * len(header))
    for r in _RECORDS:
        write(
            f"{_cut(r.case, 44):<44} {_cut(r.expected, 44):<44} {_cut(r.observed, 56):<56} "
            f"{r.rows_lost:>4} {r.rows_duplicated:>4} {r.secrets_leaked:>4} {r.outcome}"
        )
    passed = sum(r.outcome == "passed" for r in _RECORDS)
    write(
        f"faults: {passed} passed, {len(_RECORDS) - passed} failed, "
        f"rows_lost={sum(r.rows_lost for r in _RECORDS)} "
        f"rows_duplicated={sum(r.rows_duplicated for r in _RECORDS)} "
        f"secrets_leaked={sum(r.secrets_leaked for r in _RECORDS)}"
    )
