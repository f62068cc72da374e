"""Dependencies by role: pyproject.toml's ranges, the requirements.txt lock, the web app's own set."""

from __future__ import annotations

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import config

ROOT = config.PROJECT_ROOT


def pins(path) -> dict[str, str]:
    """{package: version} of every ``name==version`` line (markers kept apart: one name may have two)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line} is not pinned"
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def declared() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: [Requirement(text) for text in texts] for name, texts in project["optional-dependencies"].items()}
    return [Requirement(text) for text in project["dependencies"]], extras


def test_the_extras_are_the_roles():
    runtime, extras = declared()
    assert set(extras) >= {"app", "notebooks", "dev"}
    assert not {canonicalize_name(r.name) for r in runtime} & {"tensorflow", "tensorflow-cpu", "keras", "streamlit",
                                                               "pytest", "scikit-learn", "pandas"}


def test_every_declared_range_admits_the_locked_version():
    locked = pins(ROOT / "requirements.txt")
    runtime, extras = declared()
    for requirement in runtime + [r for group in extras.values() for r in group]:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is declared in pyproject.toml but not pinned in requirements.txt"
        assert requirement.specifier.contains(locked[name], prereleases=True), (str(requirement), locked[name])


def test_the_web_apps_requirements_cover_the_runtime_and_the_app_extra():
    app = pins(ROOT / "app" / "requirements.txt")
    locked = pins(ROOT / "requirements.txt")
    runtime, extras = declared()
    for requirement in runtime + extras["app"]:
        name = canonicalize_name(requirement.name)
        assert name in app, f"app/requirements.txt lacks {requirement.name}"
        assert app[name] == locked[name], f"{requirement.name}: app {app[name]} vs lock {locked[name]}"
