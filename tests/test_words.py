"""Words from numbers (issue 26): shares with the digits they need, counts with their noun, a verdict
between two training budgets that says so in its own sentence, wall times that do not count twice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from search.reporting.document import plural, to_markdown
from search.reporting.summary import _provenance_section
from search.reporting.words import budget_words, comparison_sentence, percent
from search.storage.results import Comparison, Difference, Improvement


@pytest.mark.parametrize(
    "share,text", [(0.00025, "0.025%"), (0.0043, "0.43%"), (0.123, "12.3%"), (0.0, "0%"), (1.0, "100.0%")]
)
def test_a_share_keeps_the_digits_that_show_it_is_above_zero(share, text):
    assert percent(share) == text


def test_counts_take_their_noun_in_the_number_they_need():
    assert (plural(1, "seed"), plural(3, "seed"), plural(0, "trial")) == ("1 seed", "3 seeds", "0 trials")


def _retrain(best_cfg, base_cfg, members=None):
    members = members or [SimpleNamespace(config=best_cfg, wall_time_s=183.0)]
    recipes = {
        "best": SimpleNamespace(config=best_cfg, wall_time_s=183.0),
        "ensemble": SimpleNamespace(config=None, wall_time_s=488.0),
        "baseline": SimpleNamespace(config=base_cfg, wall_time_s=300.0),
    }
    return SimpleNamespace(members=members, recipes=recipes, baseline_modified={}, top_k=len(members), reselection=None)


WORSE = Comparison(
    10.91, 9.0, 12.8, 1.0, seeds_a=3, seeds_b=3, n_boot=4000, verdict="worse",
    ensembles=Difference(10.0, 8.0, 12.0, 1.0), improvement=Improvement(0.0, 0.0, 0.11),
    resolvable_months={"3": 1.9, "5": 1.5, "10": 1.1},
)


def test_a_verdict_between_two_budgets_says_so_in_its_own_sentence():
    r = _retrain({"epochs": 2, "image_size": 64}, {"epochs": 5, "image_size": 64})
    assert budget_words(r, "best", "baseline") == " (trained for different budgets: 2 against 5 epochs)"
    sentence = comparison_sentence(r, "best", "baseline", WORSE)
    assert sentence.startswith("the best recipe is worse than the baseline (trained for different budgets: 2 against")
    assert "+10.91 months" in sentence and "not better in 100.0% of resamples" in sentence
    assert "P(improvement) 0.00, 95% CI 0.00 to 0.11)" in sentence
    same = _retrain({"epochs": 5, "image_size": 64}, {"epochs": 5, "image_size": 64})
    assert budget_words(same, "best", "baseline") == ""
    members = [SimpleNamespace(config={"epochs": e, "image_size": s}) for e, s in ((5, 64), (3, 64), (5, 128))]
    ens = _retrain({"epochs": 5, "image_size": 64}, {"epochs": 5, "image_size": 64}, members)
    assert budget_words(ens, "ensemble", "baseline") == (
        " (trained for different budgets: 3 to 5 against 5 epochs, 64 to 128 against 64 px)"
    )


def test_the_ensembles_wall_time_is_said_to_hold_the_best_s_not_added_to_it():
    r = _retrain({"epochs": 5}, {"epochs": 5}, [SimpleNamespace(config={"epochs": 5}) for _ in range(3)])
    s = {"commands": [], "search_wall_time_s": 600.0, "baseline": None, "test": r}
    text = "\n".join(to_markdown(_provenance_section(s)))
    assert "retrain best 183 s" in text and "retrain top-3 ensemble 488 s (its 3 members, the best's included)" in text
