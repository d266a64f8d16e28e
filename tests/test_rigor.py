"""The numbers benchmark papers ask for, each checked against a case whose answer is known:
P(improvement) (the chance a new seed of one recipe beats a new seed of the other), the expected best
value against the trials spent (Dodge et al. 2019), and the smallest difference a number of seeds
can resolve."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from boneage_core.metrics import (
    expected_best,
    paired_seed_aware_difference,
    probability_of_improvement,
    resolvable_difference,
)


def _recipe(rng: np.random.Generator, true: np.ndarray, seed_maes: np.ndarray) -> np.ndarray:
    """(seeds, images) predictions whose seed k errs by exactly seed_maes[k] on every image, half the
    images above and half below: seed k's MAE is seed_maes[k]."""
    sign = np.where(np.arange(len(true)) % 2 == 0, 1.0, -1.0)
    return true[None, :] + seed_maes[:, None] * sign[None, :]


def test_p_improvement_matches_the_normal_answer_when_seed_maes_are_normal():
    rng = np.random.default_rng(1)
    true = rng.uniform(0, 228, 20)
    # seed MAEs N(10, 1) against N(11, 1): P(a < b) = Phi(1 / sqrt 2) = 0.760
    maes_a, maes_b = rng.normal(10, 1, 300), rng.normal(11, 1, 300)
    got = probability_of_improvement(_recipe(rng, true, maes_a), _recipe(rng, true, maes_b), true, n_boot=300)
    # on these draws: exactly scipy's Mann-Whitney U over the 300 x 300 pairs
    assert got["p"] == pytest.approx(stats.mannwhitneyu(maes_b, maes_a).statistic / 300**2)
    known = stats.norm.cdf(1 / np.sqrt(2))  # in the population: within sampling error of 300 seeds a side
    assert abs(got["p"] - known) < 0.06
    # the CI holds the estimate and is as wide as 300 seeds a side allow (Hanley-McNeil SE about 0.02)
    assert got["ci_low"] < got["p"] < got["ci_high"]
    assert 0.04 < got["ci_high"] - got["ci_low"] < 0.15


def test_p_improvement_is_one_for_a_dominating_recipe_and_sums_to_one_both_ways():
    rng = np.random.default_rng(2)
    true = rng.uniform(0, 228, 30)
    a, b = _recipe(rng, true, np.array([5.0, 6, 7])), _recipe(rng, true, np.array([8.0, 9, 10]))
    assert probability_of_improvement(a, b, true, n_boot=200) == {"p": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    c = true + rng.normal(0, 8, (3, 30))
    d = true + rng.normal(0, 8, (4, 30))
    forward, back = probability_of_improvement(c, d, true)["p"], probability_of_improvement(d, c, true)["p"]
    assert forward + back == pytest.approx(1.0)
    # ties count half: a recipe against itself is a coin toss
    assert probability_of_improvement(c, c, true, n_boot=50)["p"] == 0.5


def test_p_improvement_ci_widens_with_few_seeds_and_follows_the_paired_difference():
    rng = np.random.default_rng(3)
    true = rng.uniform(0, 228, 200)
    a, b = true + rng.normal(0, 9, (3, 200)), true + rng.normal(0, 14, (3, 200))
    p = probability_of_improvement(a, b, true)
    d = paired_seed_aware_difference(a, b, true)
    assert d["ci_high"] < 0 and p["p"] == 1.0  # clearly better: every pair of seeds agrees
    assert p["ci_low"] > 0.5


def test_expected_best_equals_the_exact_answer_and_a_simulation():
    got = expected_best(np.array([3.0, 1.0, 2.0]))
    # the min of two draws from {1, 2, 3}: 1 with 5/9, 2 with 3/9, 3 with 1/9
    assert got["mean"] == pytest.approx([2.0, 14 / 9, 36 / 27])
    assert got["sd"][0] == pytest.approx(np.std([1, 2, 3]))
    rng = np.random.default_rng(4)
    values = rng.lognormal(2.5, 0.4, 40)
    curve = expected_best(values, n_max=60)
    draws = rng.choice(values, size=(20000, 60)).min(axis=1)
    assert curve["mean"][-1] == pytest.approx(draws.mean(), rel=0.01)
    assert curve["sd"][-1] == pytest.approx(draws.std(), rel=0.05)
    assert np.all(np.diff(curve["mean"]) <= 0) and curve["mean"][0] == pytest.approx(values.mean())


def test_expected_best_refuses_no_values_or_a_non_finite_one():
    for bad in ([], [1.0, np.inf]):
        with pytest.raises(ValueError):
            expected_best(np.array(bad))


def test_resolvable_difference_is_the_seed_spread_alone_when_images_agree():
    true = np.linspace(0, 228, 40)
    rng = np.random.default_rng(5)
    a, b = _recipe(rng, true, np.array([9.0, 10, 11])), _recipe(rng, true, np.array([10.0, 12, 14]))
    # the per-image paired difference is the same on every image, so only the seeds count
    z = stats.norm.ppf(0.975)
    assert resolvable_difference(a, b, true, seeds=3) == pytest.approx(z * np.sqrt((1 + 4) / 3))
    assert resolvable_difference(a, b, true, seeds=12) == pytest.approx(z * np.sqrt((1 + 4) / 12))
    with pytest.raises(ValueError):
        resolvable_difference(a[:1], b, true, seeds=3)


def test_resolvable_difference_agrees_with_the_bootstrap_ci_it_predicts():
    rng = np.random.default_rng(6)
    true = rng.uniform(0, 228, 300)
    shift_a, shift_b = rng.normal(0, 1.5, (40, 1)), rng.normal(0, 1.5, (40, 1))
    a = true + shift_a + rng.normal(0, 9, (40, 300))
    b = true + shift_b + rng.normal(0, 9, (40, 300))
    d = paired_seed_aware_difference(a, b, true, n_boot=2000)
    half = (d["ci_high"] - d["ci_low"]) / 2
    assert resolvable_difference(a, b, true, seeds=40) == pytest.approx(half, rel=0.25)


def test_the_budget_curve_counts_a_pruned_trial_at_its_last_value_and_follows_the_trial_order():
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from search.reporting.budget import budget_curve, expected_best_words

    study = optuna.create_study()
    dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}
    made = [  # (state, value, intermediate values, epochs, seconds)
        (TrialState.COMPLETE, 12.0, {1: 20.0, 2: 12.0}, 2, 30.0),
        (TrialState.PRUNED, None, {1: 25.0}, 1, 10.0),
        (TrialState.COMPLETE, 9.0, {1: 15.0, 2: 9.0}, 2, 40.0),
        (TrialState.FAIL, None, {}, 0, 5.0),  # a failed trial found nothing and is left out
    ]
    for state, value, steps, epochs, wall in made:
        study.add_trial(
            create_trial(
                state=state, value=value, params={"lr": 1e-3}, distributions=dist, intermediate_values=steps,
                user_attrs={"epochs_run": epochs, "wall_time_s": wall},
            )
        )  # fmt: skip
    c = budget_curve(study)
    assert c["trials"] == 3 and c["observed_best"] == [12.0, 12.0, 9.0]
    assert c["observed_epochs"] == [2, 3, 5] and c["observed_wall_s"] == [30.0, 40.0, 80.0]
    assert c["epochs_per_trial"] == pytest.approx(5 / 3)
    assert c["expected_best"] == pytest.approx(list(expected_best(np.array([12.0, 25.0, 9.0]))["mean"]), abs=1e-3)
    assert "3 trials (5 epochs) 10.37 ± " in expected_best_words(c)  # (19 x 9 + 7 x 12 + 25) / 27


def test_the_search_benchmark_meets_a_claim_only_where_its_interval_over_sampler_seeds_supports_it():
    from search.bench.search_efficiency import claims, curves, t_interval

    def run(seed, epochs, best, trials=3):
        return {
            "sampler_seed": seed, "trials": trials, "pruned": 0, "failed": 0, "epochs": epochs, "best_val_mae": best,
            "wall_s": 1.0, "read_back": 0, "epochs_per_trial": 5, "curve_epochs": [5, 10, 15][:trials],
            "curve_best": [best + 2, best + 1, best][:trials], "complete_values": [best + 2, best + 1, best][:trials],
        }  # fmt: skip

    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (mean, hi - mean) == (2.0, pytest.approx(stats.t.ppf(0.975, 2) * 1 / np.sqrt(3)))
    clear = {
        "tpe_pruned": [run(0, 5, 9.0), run(1, 6, 9.1), run(2, 5, 9.05)],
        "tpe_unpruned": [run(0, 15, 9.0), run(1, 15, 9.2), run(2, 15, 9.1)],
        "random_equal_epochs": [run(0, 5, 10.0, 1), run(1, 5, 10.2, 1), run(2, 5, 10.1, 1)],
    }
    figures, met, words = claims(clear)
    assert met and figures["claims_met"] == {"epochs_saved": True, "within_5pct": True, "beats_random": True}
    assert "TPE + pruning lower" in words and "over 3 sampler seeds" in words
    # one seed where random search wins by far: the mean still favours TPE, the interval does not
    noisy = {**clear, "random_equal_epochs": [run(0, 5, 10.0, 1), run(1, 5, 7.0, 1), run(2, 5, 10.1, 1)]}
    figures, met, words = claims(noisy)
    assert not met and figures["claims_met"]["beats_random"] is False and "no significant difference" in words
    c = curves(clear)
    assert c["tpe_unpruned"]["mean"][14] == pytest.approx(9.1) and c["tpe_unpruned"]["low"][14] == 9.0
    assert c["random_expected"]["epochs"] == [5, 10, 15]  # Dodge over the random arm's 3 pooled trials
