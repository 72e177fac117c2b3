"""The documentation says what the code does: the settings table lists every setting with its default, the
``-p`` help names every sampling parameter, and every link between the pages reaches a page and a heading."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from dscbatch.cli.main import cli
from dscbatch.core.settings import ENV_PREFIX, Settings
from dscbatch.jobs.requests import Params

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _settings_table() -> dict[str, str]:
    """docs/settings.md's rows: variable -> its default cell."""
    rows: dict[str, str] = {}
    for line in (DOCS / "settings.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `DSCBATCH_"):
            variable, default, *_ = (cell.strip() for cell in line.strip().strip("|").split("|"))
            rows[variable.strip("`")] = default
    return rows


def test_the_settings_table_lists_every_setting() -> None:
    documented = set(_settings_table())
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert documented == fields, (f"docs/settings.md misses {sorted(fields - documented)} and lists "
                                  f"{sorted(documented - fields)}, which Settings (core/settings.py) does not have")


def test_the_settings_table_gives_each_default() -> None:
    """A default in backticks is read as that variable's value and must give the field's default; any other
    cell (none, auto, one per core) stands for a field whose default is None."""
    wrong = []
    for variable, cell in _settings_table().items():
        field = variable.removeprefix(ENV_PREFIX).lower()
        expected = getattr(Settings(), field)  # the default as validated (a leading ~ expanded)
        documented = (getattr(Settings.from_env({variable: cell.strip("`")}), field) if cell.startswith("`")
                      else None)
        if documented != expected:
            wrong.append(f"{variable}: docs/settings.md says {cell}, Settings has {expected!r}")
    assert not wrong, "\n".join(wrong)


def test_the_param_help_names_every_sampling_parameter() -> None:
    result = CliRunner().invoke(cli, ["submit", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    param_help = text[text.index("--param KEY=VALUE"):text.index("--skip-invalid")]
    missing = [name for name in Params.model_fields if not re.search(rf"\b{name}\b", param_help)]
    assert not missing, f"submit's -p help leaves out {missing}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_pages_reaches_a_page_and_heading() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # an external URL
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading in {linked.name}")
    assert not broken, "\n".join(broken)


def test_the_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"
            assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
