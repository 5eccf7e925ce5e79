"""The built-in classifiers by name, and selection of them for a request."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from classifiers.errors import ModerationError
from classifiers.face_attributes import FACE_ATTRIBUTES
from classifiers.gore import GORE
from classifiers.labels import LabelSet
from classifiers.nudity import NUDITY
from classifiers.offensive import OFFENSIVE

BUILTIN_CLASSIFIERS: dict[str, LabelSet] = {
    s.name: s for s in (NUDITY, GORE, OFFENSIVE, FACE_ATTRIBUTES)
}


def select_builtins(names: Iterable[str] | None, trained: Collection[str] = ()) -> tuple[str, ...]:
    """Names to run: every built-in and every ``trained`` head for ``None``, else the given
    ones in order, de-duplicated.

    Raises ``unknown_classifier`` naming every unknown name and the known ones.
    """
    if names is None:
        return (*BUILTIN_CLASSIFIERS, *sorted(trained))
    chosen = tuple(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in BUILTIN_CLASSIFIERS and n not in trained]
    if unknown:
        raise ModerationError(
            "unknown_classifier",
            f"unknown classifier(s) {unknown}; known: {sorted(BUILTIN_CLASSIFIERS) + sorted(trained)}",
        )
    return chosen
