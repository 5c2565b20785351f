"""`make mutation`'s score: mutmut's verdicts per module, less the surviving mutants judged
equivalent in docs/testing.md ("Mutation testing"), against the 85% target of issue 24.

Reads ``mutmut results --all true`` (run from the repository root after ``mutmut run``). A mutant
counts as killed when a test failed on it, or when it made the tests time out (a mutant that
loops forever is caught). The score is killed / (all mutants - those judged equivalent); a
mutant no fast test reaches ("no tests") counts against it. Judged-equivalent mutants that no
longer survive (the code changed under them) are listed as stale, so the page stays true.
Prints the table and exits 0; the verdict is in the last line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

TARGET = 0.85
KILLED = {"killed", "timeout", "caught by type check"}
DOCS = Path("docs/testing.md")
# A judged mutant in the docs' table: | `bq_assets.engine.<module>.<name>__mutmut_<n>` | why |
JUDGED = re.compile(r"^\|\s*`(bq_assets\.engine\.[^`]+__mutmut_\d+)`\s*\|")
RESULT = re.compile(r"^\s+(\S+__mutmut_\d+): (.+)$")


def verdicts(mutmut: str) -> dict[str, str]:
    """Mutant name → mutmut's verdict, from ``mutmut results --all true``."""
    out = subprocess.run(
        [mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    return {m.group(1): m.group(2).strip() for m in map(RESULT.match, out.splitlines()) if m}


def judged_equivalent(docs: Path = DOCS) -> set[str]:
    """The mutants docs/testing.md judges equivalent (its table rows)."""
    return {m.group(1) for m in map(JUDGED.match, docs.read_text().splitlines()) if m}


def module_of(mutant: str) -> str:
    # bq_assets.engine.manifest.xǁManifestǁto_json__mutmut_7 → manifest
    return mutant.split(".")[2]


def report(found: dict[str, str], equivalent: set[str]) -> tuple[list[str], float]:
    """The report's lines and the score."""
    by_module: dict[str, Counter] = defaultdict(Counter)
    for mutant, verdict in found.items():
        kind = (
            "killed"
            if verdict in KILLED
            else "equivalent"
            if mutant in equivalent and verdict == "survived"
            else verdict
        )
        by_module[module_of(mutant)][kind] += 1
    lines = [
        f"{'module':<22}{'mutants':>8}{'killed':>8}{'equiv.':>8}{'survived':>9}{'no tests':>9}"
    ]
    total = Counter()
    for module in sorted(by_module):
        counts = by_module[module]
        total.update(counts)
        lines.append(
            f"{module:<22}{sum(counts.values()):>8}{counts['killed']:>8}"
            f"{counts['equivalent']:>8}{counts['survived']:>9}{counts['no tests']:>9}"
        )
    shown = ("killed", "equivalent", "survived", "no tests", "not checked")
    others = {k: v for k, v in total.items() if k not in shown}
    # An interrupted run leaves mutants "not checked": the score is then of the checked ones.
    counted = sum(total.values()) - total["equivalent"] - total["not checked"]
    score = total["killed"] / counted if counted else 0.0
    unjudged = sorted(m for m, v in found.items() if v == "survived" and m not in equivalent)
    stale = sorted(m for m in equivalent if found.get(m) != "survived")
    timeouts = sum(v == "timeout" for v in found.values())
    lines += [f"other verdicts: {dict(others)}"] if others else []
    lines += [f"killed by a timeout (an endless loop, or a very busy machine): {timeouts}"]
    lines += [f"surviving, not judged equivalent: {m}" for m in unjudged]
    lines += [f"no tests: {m}" for m in sorted(m for m, v in found.items() if v == "no tests")]
    lines += [f"judged equivalent in {DOCS} but no longer surviving (stale): {m}" for m in stale]
    if total["not checked"]:
        lines.append(f"not checked (the run was interrupted): {total['not checked']}")
    verdict = "meets" if score >= TARGET else "BELOW"
    lines.append(
        f"mutation: {total['killed']} killed of {counted} non-equivalent mutants "
        f"({total['equivalent']} judged equivalent): score {score:.1%}, {verdict} the "
        f"{TARGET:.0%} target"
    )
    return lines, score


def main() -> None:
    mutmut = sys.argv[1] if len(sys.argv) > 1 else "mutmut"
    lines, _ = report(verdicts(mutmut), judged_equivalent())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
