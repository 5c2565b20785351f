"""`make mutation`'s score: killed over all mutants less those judged equivalent in
docs/testing.md; untested mutants count against it; stale judgments are named."""

from __future__ import annotations

from pathlib import Path

from bq_assets_tests.mutation_report import judged_equivalent, report

M = "bq_assets.engine.manifest.x_read_manifest__mutmut_"


def test_the_score_leaves_out_judged_equivalents_and_counts_untested_mutants() -> None:
    found = {
        f"{M}1": "killed",
        f"{M}2": "timeout",
        f"{M}3": "survived",
        f"{M}4": "survived",
        f"{M}5": "no tests",
        f"{M}6": "killed",
    }
    lines, score = report(found, {f"{M}3", f"{M}9"})
    assert score == 3 / 5
    assert lines[1].split() == ["manifest", "6", "3", "1", "1", "1"]
    assert f"surviving, not judged equivalent: {M}4" in lines
    assert f"no tests: {M}5" in lines
    assert any(line.endswith(f"(stale): {M}9") for line in lines)
    assert lines[-1] == (
        "mutation: 3 killed of 5 non-equivalent mutants (1 judged equivalent): score 60.0%, "
        "BELOW the 85% target"
    )


def test_judged_mutants_are_read_from_the_docs_table(tmp_path: Path) -> None:
    docs = tmp_path / "testing.md"
    docs.write_text(
        f"| mutant | why |\n|---|---|\n| `{M}7` | formatting only |\n| `not a mutant` | x |\n"
    )
    assert judged_equivalent(docs) == {f"{M}7"}
