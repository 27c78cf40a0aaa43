"""Every setting of relay/core/config.py has a row in docs/configuration.md, found by its
environment variable in the first column of the settings table: a setting added without its
documentation fails here instead of drifting."""

import re
from pathlib import Path

from relay.core.config import Settings, env_name

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def documented_variables(markdown: str) -> set[str]:
    """The backquoted names in the first cell of each row of the `## Settings` table."""
    section = markdown.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    return names


def test_every_setting_has_a_row_in_the_configuration_page() -> None:
    documented = documented_variables(CONFIGURATION.read_text())
    missing = {env_name(field) for field in Settings.model_fields} - documented
    assert not missing, f"settings without a row in docs/configuration.md: {sorted(missing)}"


def test_the_table_names_only_settings_that_exist() -> None:
    documented = documented_variables(CONFIGURATION.read_text())
    known = {env_name(field) for field in Settings.model_fields}
    assert not documented - known, f"rows naming no setting: {sorted(documented - known)}"


def test_a_missing_row_is_noticed() -> None:
    page = (
        "# C\n\n## Settings\n\n| variable | meaning |\n|---|---|\n| `OUTBOX_A` / `OUTBOX_B` | x |\n"
    )
    page += "\nText naming `OUTBOX_C` outside the table.\n\n## Other\n\n| `OUTBOX_D` | y |\n"
    assert documented_variables(page) == {"OUTBOX_A", "OUTBOX_B"}
