"""The report's figures as a reader sees them (issue 26): log ticks at 1, 2, 5 x 10^k written out,
parameters on the scale they were searched on, categories by name, colour ends visible on white,
numbers that never read -0.0. The page itself is measured in a browser in test_retrain_report."""

from __future__ import annotations

import math

import optuna
import pytest
from plotly.colors import hex_to_rgb

from search.reporting.axes import SCALE, log_ticks, signed
from search.reporting.parallel import parallel_figure


def test_log_ticks_are_1_2_5_times_a_power_of_ten_written_out():
    assert log_ticks([20, 700]) == ([20, 50, 100, 200, 500, 1000], ["20", "50", "100", "200", "500", "1000"])
    vals, text = log_ticks([1e-4, 1e-2])
    assert text == ["0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01"]
    assert log_ticks([1e-4, 1e-2], most=4)[1] == ["0.0001", "0.001", "0.01"]  # thinned to powers of ten
    assert log_ticks([0.0013, 0.0085], most=3, inside=True)[1] == ["0.002", "0.005"]
    # too narrow for two of 1, 2, 5 x 10^k (12.5 to 16.1 holds none): round steps inside the range
    assert log_ticks([12.5, 16.1]) == ([13, 14, 15, 16], ["13", "14", "15", "16"])


@pytest.mark.parametrize("value,text", [(-0.04, "+0.0"), (-0.06, "-0.1"), (2.25, "+2.2"), (-21.44, "-21.4")])
def test_a_signed_value_never_reads_minus_zero(value, text):
    assert signed(value) == text


def test_both_ends_of_the_colour_scale_show_on_white():
    for _, colour in (SCALE[0], SCALE[-1]):
        luminance = sum(c * w for c, w in zip(hex_to_rgb(colour), (0.2126, 0.7152, 0.0722), strict=True)) / 255
        assert luminance < 0.75, colour  # Blues' own first colour, #f7fbff, is 0.98


def test_parallel_coordinates_draw_each_parameter_on_its_searched_scale():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for lr, loss, sex in ((1e-4, "mse", True), (1e-3, "l1", False), (1e-2, "mse", False)):
        study.enqueue_trial({"lr": lr, "loss": loss, "use_sex": sex})
    study.optimize(
        lambda t: (
            t.suggest_float("lr", 1e-4, 1e-2, log=True),
            t.suggest_categorical("loss", ["mse", "l1"]),
            t.suggest_categorical("use_sex", [True, False]),
        )[0]
        * 1000,
        n_trials=3,
    )
    fig = parallel_figure(study, "Parameters of every trial")
    names = [n.replace("<br>", " ") for n in fig.layout.xaxis.ticktext]
    assert names == ["val MAE (months), log", "learning rate", "loss", "sex as input"]
    lines = {round(t.y[1], 6) for t in fig.data if t.mode == "lines"}
    assert lines == {0.0, 0.5, 1.0}  # 1e-4, 1e-3, 1e-2: evenly spaced, as on a log axis
    ticks = {(round(a.x), a.text) for a in fig.layout.annotations}
    assert {(1, "0.0001"), (1, "0.001"), (1, "0.01"), (2, "mse"), (2, "l1"), (3, "yes"), (3, "no")} <= ticks
    assert not any("'" in text for _, text in ticks)
    assert math.isclose(min(t.y[0] for t in fig.data if t.mode == "lines"), 0.0)
