"""The authors' helper check_migration, on given contexts and on live ones."""

import pytest

from workflows_admin.testing import check_migration
from workflows_admin.workflows.services.instances import start_workflows


def test_given_contexts_return_their_diffs():
    check = check_migration("research-agent", "1.0.0", "2.1.0", [{"topic": "t", "raw_text": "x"}], step="analyze")
    assert check.path == ["1.0.0", "2.0.0", "2.1.0"]
    assert check.diffs[0]["removed"] == {"raw_text": "x"}
    assert set(check.diffs[0]["added"]) == {"enriched_text", "sources", "model_config"}
    assert check.results[0]["step"] == "analyze"


def test_failures_are_listed_in_one_assertion():
    with pytest.raises(AssertionError, match=r"fails for 2 of 3 context\(s\)") as error:
        check_migration("research-agent", "1.0.0", "2.0.0", [{"topic": "t", "raw_text": "x"}, {"topic": "t"}, {}])
    assert str(error.value).count("raised KeyError") == 2


@pytest.mark.django_db
def test_live_contexts_from_the_database(synced):
    start_workflows("toy", [{"n": i, "poison": i == 0} for i in range(5)], version="1.0.0")
    with pytest.raises(AssertionError, match="poisoned context"):
        check_migration("toy", "1.0.0", "2.0.0", from_database=10)
    assert check_migration("toy", "1.0.0", "2.0.0", from_database=3).checked == 3  # the 3 newest are fine
