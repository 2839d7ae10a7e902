"""Application profiles: a project chooses one in ``[tool.hokmdb] profile``, by entry point
name or import path; without one the core runs its generic checks and imports nothing of
Hokm; a profile that cannot be loaded is a configuration error that names the key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT

from pytest_hokmdb.checks.catalog import groups, waiver_problems
from pytest_hokmdb.config.model import SmokeSettings
from pytest_hokmdb.config.profile import NO_PROFILE, load_profile, project_profile
from pytest_hokmdb.errors import ConfigError, Refused
from pytest_hokmdb.migration.settings import load_settings


def _project(tmp_path: Path, tool: str) -> Path:
    root = tmp_path / "project"
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(tool))
    return root


def test_this_project_runs_the_hokm_profile_by_entry_point_name() -> None:
    profile = project_profile(PROJECT_ROOT)
    assert profile.name == "hokm"
    assert profile is load_profile("hokm") is load_profile("hokm_profile:profile")
    assert "moves" in profile.hot_tables
    names = {fn.spec.name for fn in groups(PROJECT_ROOT)["integrity"]}  # type: ignore[attr-defined]
    assert len(names) == 11 and all(name.startswith("integrity.") for name in names)
    # The migration suite takes the models from the profile: pyproject names no metadata.
    assert load_settings(PROJECT_ROOT).metadata == "hokm_profile.models:metadata"


def test_a_project_without_a_profile_gets_the_generic_checks_only(tmp_path: Path) -> None:
    root = _project(tmp_path, """\
        [tool.hokmdb.migrations]
        metadata = false
        """)
    assert project_profile(root) is NO_PROFILE
    assert groups(root)["integrity"] == []
    assert [fn.spec.name for fn in groups(root)["connection"]] == [  # type: ignore[attr-defined]
        fn.spec.name for fn in groups(PROJECT_ROOT)["connection"]]  # type: ignore[attr-defined]
    with pytest.raises(Refused, match="profile none has no seeder, so there is no data to generate"):
        NO_PROFILE.load_seeder()
    with pytest.raises(ConfigError, match=r"metadata is not set.*\[tool.hokmdb\] profile"):
        load_settings(_project(tmp_path / "other", "[tool.hokmdb]\n")).load_metadata()


def test_an_unknown_profile_name_is_a_config_error_listing_the_installed_ones(tmp_path: Path) -> None:
    root = _project(tmp_path, """\
        [tool.hokmdb]
        profile = "poker"
        """)
    with pytest.raises(ConfigError) as caught:
        project_profile(root)
    assert "[tool.hokmdb] profile = 'poker': no such profile (installed: hokm)" in caught.value.message
    assert "install the package that provides it" in (caught.value.hint or "")


def test_a_profile_path_that_does_not_import_or_is_not_a_profile_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[tool.hokmdb\] profile = 'no_such_pkg.profile:profile' cannot be loaded"):
        load_profile("no_such_pkg.profile:profile")
    with pytest.raises(ConfigError, match=r"profile = 'hokm_profile.rules:SUITS' is a tuple, not a hokmdb Profile"):
        load_profile("hokm_profile.rules:SUITS")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        project_profile(_project(tmp_path, "[tool.hokmdb\nprofile = 1\n"))


def test_a_profile_s_unknown_waiver_names_its_own_checks_as_waivable(tmp_path: Path) -> None:
    """Waivers are checked against the core's checks plus the profile's."""
    settings = SmokeSettings.model_validate({"waivers": {"integrity.no_such": {"reason": "a reason long enough"}}})
    problems = waiver_problems(settings, PROJECT_ROOT)
    assert len(problems) == 1 and "smoke.waivers.integrity.no_such: no such check" in problems[0]
    assert "integrity." in problems[0].split("waivable:")[1]  # the profile's critical invariants are waivable


def test_a_generic_project_s_checks_never_import_hokm(tmp_path: Path) -> None:
    """Loading the catalog, the migration settings and the profile for a project without a
    profile leaves every Hokm module unimported (a fresh interpreter, so nothing is cached)."""
    root = _project(tmp_path, "[tool.hokmdb.migrations]\nmetadata = false\n")
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from pytest_hokmdb.checks.catalog import groups
        from pytest_hokmdb.migration.settings import load_settings
        root = Path({str(root)!r})
        assert groups(root)["integrity"] == []
        assert load_settings(root).load_metadata() is None
        print(sorted(m for m in sys.modules if m.split(".")[0] == "hokm_profile"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
