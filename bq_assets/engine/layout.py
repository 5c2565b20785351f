"""Object names: where each run's shards, manifest and ``_SUCCESS`` go, rendered from the spec's
``objects.template`` (``{export}``, ``{run}``, ``{date}``, ``{shard}``, ``{partition}``), and the pattern that
finds the runs of an export again (for retention)."""

import datetime as dt
import re
import string
from dataclasses import dataclass


class _Cut:
    """Formats as a marker, so a date placeholder ends the static part of a template."""

    def __format__(self, spec: str) -> str:
        return "\0"


@dataclass(frozen=True)
class ObjectLayout:
    """The object names of one run, rendered from the spec's template."""

    template: str
    export: str
    run_id: str
    run_date: dt.date
    suffix: str
    #: The partition(s) the run loads, for ``{partition}`` (a partitioned export only).
    partition: str = ""

    def shard(self, index: int) -> str:
        return self._render(shard=index) + self.suffix

    @property
    def _run_folder_template(self) -> str:
        """The template up to (and with) its last segment holding ``{run}``."""
        segments = self.template.split("/")
        last = max(i for i, segment in enumerate(segments) if "{run}" in segment)
        return "/".join(segments[: last + 1])

    @property
    def run_prefix(self) -> str:
        """The folder that holds this run and nothing else: up to the segment with ``{run}``."""
        return self._run_folder_template.format(**self._values()) + "/"

    def run_prefix_pattern(self) -> "re.Pattern[str]":
        """Matches the run prefix of any run of this export, capturing its run id as ``run``."""
        pattern = ""
        for literal, name, spec, _ in string.Formatter().parse(self._run_folder_template):
            pattern += re.escape(literal)
            if name == "export":
                pattern += re.escape(self.export)
            elif name == "run":
                pattern += "(?P=run)" if "(?P<run>" in pattern else "(?P<run>[^/]+)"
            elif name == "date":
                pattern += _strftime_pattern(spec or "%Y-%m-%d")
            elif name == "partition":
                pattern += r"[^/]+"
            elif name is not None:
                pattern += r"\d+"
        return re.compile(pattern + "/")

    @property
    def export_prefix(self) -> str:
        """The folder under which every run of this export lives (for retention)."""
        return export_prefix(self.template, self.export)

    def _values(self, **extra: object) -> dict[str, object]:
        return {
            "export": self.export,
            "run": self.run_id,
            "date": self.run_date,
            "partition": self.partition,
            **extra,
        }

    def _render(self, **extra: object) -> str:
        return self.template.format(**self._values(**extra))


def export_prefix(template: str, export: str) -> str:
    """The folder under which every run of ``export`` lives: ``template`` up to the segment
    of its first placeholder other than ``{export}``."""
    static = template.format(export=export, run="\0", date=_Cut(), partition="\0", shard=0)
    return static.split("\0")[0].rpartition("/")[0] + "/"


_STRFTIME_FIELDS = {"Y": r"\d{4}", "j": r"\d{3}", "%": "%"}


def _strftime_pattern(spec: str) -> str:
    """A regex for the dates ``spec`` formats (``%Y/%m/%d`` → ``\\d{4}/\\d{2}/\\d{2}``)."""
    parts = re.split(r"(%.)", spec)
    return "".join(
        _STRFTIME_FIELDS.get(part[1], r"\d{2}" if part[1] in "mdHMSy" else r"[^/]+?")
        if part.startswith("%") and len(part) == 2
        else re.escape(part)
        for part in parts
    )
