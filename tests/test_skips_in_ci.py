"""In CI a skipped test fails unless tests/allowed_skips.txt lists it with a reason (the hook in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest

pytest_plugins = ["pytester"]

SKIPPING_TESTS = '''
import pytest


def test_runs():
    assert True


def test_needs_something_missing():
    pytest.skip("no frobnicator installed")


@pytest.fixture
def missing_resource():
    pytest.skip("no resource here")


def test_skipped_by_its_fixture(missing_resource):
    assert False


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
'''
SKIPPED_MODULE = '''
import pytest

pytest.skip("the whole module needs a GPU", allow_module_level=True)


def test_on_the_gpu():
    assert True
'''


@pytest.fixture
def suite(pytester, monkeypatch, tmp_path):
    """A test folder using the project's hook, with an empty allowed list; returns the list's path."""
    pytester.makeconftest("from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n")
    pytester.makepyfile(test_skipping=SKIPPING_TESTS, test_gpu_only=SKIPPED_MODULE)
    allowed = tmp_path / "allowed_skips.txt"
    allowed.write_text("# none\n")
    monkeypatch.setattr(conftest, "ALLOWED_SKIPS_FILE", allowed)
    return allowed


def test_skips_pass_outside_ci(pytester, suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_every_unlisted_skip_fails_in_ci(pytester, suite, monkeypatch):
    monkeypatch.setenv("CI", "1")
    result = pytester.runpytest("-p", "no:cacheprovider", "--continue-on-collection-errors")
    # a skip in a fixture fails the setup (an error), a skipped module fails its collection (an error)
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    result.stdout.fnmatch_lines(["*Skipped in CI (Skipped: no frobnicator installed): a skip in CI is a failure*"])
    result.stdout.fnmatch_lines(["*Skipped in CI*the whole module needs a GPU*allowed_skips.txt*"])


def test_the_hook_fires_in_pytest_xdist_workers(pytester, suite, monkeypatch):
    monkeypatch.setenv("CI", "1")
    # the workers import tests.conftest, and read the project's own list (which names none of these tests)
    monkeypatch.setenv("PYTHONPATH", str(Path(conftest.__file__).resolve().parents[1]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile",
                                           "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)


def test_a_listed_skip_passes_in_ci(pytester, suite, monkeypatch):
    suite.write_text("test_skipping.py::test_needs_something_missing  # reviewed: the frobnicator is GPU-only\n"
                     "test_skipping.py::test_skipped_by_its_fixture  # reviewed: no such resource in CI\n"
                     "test_gpu_only.py  # reviewed: CI has no GPU\n")
    monkeypatch.setenv("CI", "1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_an_entry_without_a_reason_is_an_error(tmp_path):
    listed = tmp_path / "allowed_skips.txt"
    listed.write_text("tests/test_x.py::test_y\n")
    with pytest.raises(ValueError, match="allowed_skips.txt:1: write '<test node id>  # <why"):
        conftest.allowed_skips(listed)


def test_the_reviewed_list_gives_a_reason_for_every_entry():
    assert all(reason for reason in conftest.allowed_skips().values())
