"""Prompt variants: other template sets or label wordings of one classifier, compared on the
same images (the way to tune the built-in label sets).

A variants file (YAML or JSON) names each variant and what it changes; what it leaves out
stays as the classifier has it::

    variants:
      - name: bare
        templates: ["{}"]
      - name: short-wording
        prompts:
          explicit: ["nudity"]
          none: ["a photo", "an everyday scene"]

The classifier as it is always runs too, as ``baseline``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from classifiers.labels import LabelSet
from evaluation.dataset import DatasetError

BASELINE = "baseline"


@dataclass(frozen=True)
class Variant:
    name: str
    label_set: LabelSet


def apply_variant(base: LabelSet, templates=None, prompts=None, negatives=None) -> LabelSet:
    """``base`` with other templates and/or other prompts (or negatives) for some labels."""
    prompts, negatives = dict(prompts or {}), dict(negatives or {})
    unknown = sorted((set(prompts) | set(negatives)) - set(base.label_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not labels of {base.name!r} {list(base.label_names)}")
    labels = tuple(
        dataclasses.replace(
            label,
            prompts=tuple(prompts.get(label.name, label.prompts)),
            negatives=tuple(negatives.get(label.name, label.negatives)),
        )
        for label in base.labels
    )
    changes = {"labels": labels}
    if templates is not None:
        changes["templates"] = tuple(templates)
    return dataclasses.replace(base, **changes)  # LabelSet validates itself again


def load_variants(path: str | Path, base: LabelSet) -> list[Variant]:
    """The baseline, then every variant in the file. Raises ``DatasetError`` with the reason."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot read variants file {path}: {exc}") from None
    entries = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path}: expected `variants:` with a list of {{name, templates?, prompts?}}")
    variants = [Variant(BASELINE, base)]
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DatasetError(f"{path}: variant {number} needs a `name`")
        extra = set(entry) - {"name", "templates", "prompts", "negatives"}
        if extra:
            raise DatasetError(f"{path}: variant {entry['name']!r} has unknown keys {sorted(extra)}")
        try:
            label_set = apply_variant(base, entry.get("templates"), entry.get("prompts"), entry.get("negatives"))
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}: variant {entry['name']!r}: {exc}") from None
        variants.append(Variant(entry["name"], label_set))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: variant names must be unique (and not {BASELINE!r}): {names}")
    return variants
