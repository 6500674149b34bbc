"""Config problems as values: every check appends a `ConfigIssue`, the loader raises them all at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ConfigIssue:
    """One problem (or note) at a place in the config file; str() is the `FILE:LINE: reason` form."""

    file: str
    line: int | None  # 1-based; None when the file could not be read at all
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """A policy file was refused. `.errors` holds every problem found, not just the first."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
