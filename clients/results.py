"""Per-image outcomes of ``classify_many``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from classifiers.schemas import ClassifyResponse


@dataclass(frozen=True)
class ManyResult:
    """One input of a batch: its position, the input, and either the response or the error."""

    index: int
    source: Any
    response: ClassifyResponse | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
