"""Where the engine reports progress: a run's log in Dagster, any ``logging.Logger`` elsewhere."""

from typing import Protocol


class Log(Protocol):
    def info(self, msg: str) -> object: ...
    def warning(self, msg: str) -> object: ...
