"""What the docs claim about the code, checked: the configuration table lists exactly the
settings model's fields, every environment override is documented, and every relative link
(and #anchor) in README.md and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from deployments.settings import ENV_OVERRIDES, AppArgs

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PAGE = ROOT / "docs" / "configuration.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def settings_fields() -> set[str]:
    names = set()
    for name, field in AppArgs.model_fields.items():
        nested = getattr(field.annotation, "model_fields", None)
        names |= {f"{name}.{sub}" for sub in nested} if nested else {name}
    return names


def documented_args() -> set[str]:
    """Backticked names in the first column of the args table (the first table on the page)."""
    text = CONFIG_PAGE.read_text(encoding="utf-8")
    rows = re.search(r"\n(\|[^\n]*\|\n\|[-| :]+\|\n(?:\|[^\n]*\|\n)+)", text).group(1).splitlines()[2:]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def test_the_configuration_table_lists_every_setting_and_nothing_else():
    fields, documented = settings_fields(), documented_args()
    assert not fields - documented, f"undocumented args: {sorted(fields - documented)}"
    assert not documented - fields, f"documented args that do not exist: {sorted(documented - fields)}"


def test_every_environment_override_is_documented():
    text = CONFIG_PAGE.read_text(encoding="utf-8")
    for variable, field in ENV_OVERRIDES.items():
        assert variable in text and f"`{field}`" in text


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to '-'."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_relative_links_and_anchors_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http(s):, mailto:
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 260
