"""The test-set ledger: full runs append each scoring of the official test set; smoke runs do not."""

from __future__ import annotations

import pytest

from helpers import ledger, report


@pytest.fixture
def private_ledger(tmp_path, monkeypatch):
    path = tmp_path / "test_ledger.csv"
    monkeypatch.setenv(ledger.LEDGER_ENVIRONMENT_VARIABLE, str(path))
    return path


def test_a_full_run_appends_a_dated_row_per_scoring_and_a_smoke_run_nothing(private_ledger):
    assert not ledger.record_test_scoring("Keras model: test predictions", "report", 624, "smoke")
    assert not private_ledger.exists()
    assert ledger.record_test_scoring("Keras model: test predictions", "report", 624, "full")
    assert ledger.record_test_scoring("phone models against Keras", "parity", 624, "full")
    rows = ledger.read_ledger()
    assert [row["why"] for row in rows] == ["report", "parity"] and rows[0]["films"] == "624"
    assert rows[0]["date_utc"].endswith("Z") and rows[0]["commit"]
    assert private_ledger.read_text().splitlines()[0] == ",".join(ledger.COLUMNS)


def test_a_scoring_needs_what_and_why_and_a_foreign_file_is_refused(private_ledger):
    with pytest.raises(ValueError, match="what was scored and why"):
        ledger.record_test_scoring("", "report", 1, "full")
    private_ledger.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not the test-set ledger"):
        ledger.read_ledger()


def test_the_readme_line_counts_the_scorings_by_reason(private_ledger):
    assert "has not been scored" in report.test_ledger_block([])
    for why in ("report", "parity", "report"):
        ledger.record_test_scoring("something", why, 624, "full")
    block = report.test_ledger_block(ledger.read_ledger())
    assert "**3 times**" in block and "report 2; parity 1" in block and "test_ledger.csv" in block


def test_the_readme_ledger_line_matches_the_committed_ledger():
    results = report.load_results()
    text = report.README.read_text()
    if "test_ledger" in results:
        assert report.readme_block(text, "test_ledger") == report.test_ledger_block(results["test_ledger"]["rows"])
    else:  # no full run has scored the test set since the ledger began: the block says nothing yet
        assert report.readme_block(text, "test_ledger") == ""
