"""The container image installs from deploy/requirements.lock only (`--require-hashes`): every
dependency of the `relay` extra must be in it, or the image builds and then fails on import."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    """The normalised project name of a requirement string (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def test_the_image_lock_holds_every_dependency_of_the_relay_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["relay"]}
    wanted.discard("outbox-relay")
    lock = (ROOT / "deploy" / "requirements.lock").read_text()
    locked = {_name(line) for line in lock.splitlines() if re.match(r"[A-Za-z0-9]", line)}
    assert wanted <= locked, f"missing from deploy/requirements.lock: {sorted(wanted - locked)}"
