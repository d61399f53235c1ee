"""The study's statistics against known answers: tabulated t quantiles and p values, hand-counted exact
tests, and the decisions the report draws from them."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from study import statistics as st  # noqa: E402


@pytest.mark.parametrize("df, q", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (9, 2.262157), (30, 2.042272)])
def test_t_quantiles_match_the_tables(df, q):
    assert st.t_quantile(0.975, df) == pytest.approx(q, abs=1e-5)
    assert st.t_quantile(0.025, df) == pytest.approx(-q, abs=1e-5)


def test_t_tail_probabilities_match_known_values():
    assert 2 * st.t_sf(2.0, 5) == pytest.approx(0.101939, abs=1e-6)
    assert st.t_sf(0.0, 3) == pytest.approx(0.5)
    assert st.t_sf(-1.5, 8) == pytest.approx(1 - st.t_sf(1.5, 8))


def test_paired_t_interval_of_one_two_three():
    mean, lo, hi, p, p_greater = st.paired_t([1.0, 2.0, 3.0])
    # mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653
    assert (mean, lo, hi) == pytest.approx((2.0, 2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-5)
    assert p == pytest.approx(2 * st.t_sf(2 * math.sqrt(3), 2)) and p_greater == pytest.approx(p / 2)


def test_the_readme_lead_of_455_points_is_not_significant_with_three_seeds():
    """The per-seed differences of a1-2x-suffix − a0-2x: the issue's recomputation, −3.5..+12.6, p = 0.14."""
    test = st.seed_test([7.8, 4.5, 1.3])
    assert (round(test.lo, 1), round(test.hi, 1)) == (-3.5, 12.6) and round(test.t_p, 2) == 0.14
    assert test.flip_p == 0.25 and test.sign_p == 0.25 and not test.significant


def test_exact_tests_count_sign_patterns():
    assert st.sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)  # only all-positive or all-negative
    assert st.sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0], greater=True) == pytest.approx(1 / 32)
    assert st.sign_flip_p([3.0, -1.0], greater=True) == pytest.approx(2 / 4)  # (+3, -1) itself and (+3, +1)
    assert st.sign_flip_p([1.0, -1.0]) == 1.0
    assert st.sign_test_p([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)
    assert st.sign_test_p([1, 1, 1, 1, -1]) == pytest.approx(2 * 6 / 32)
    assert st.sign_test_p([0, 0]) == 1.0


def test_significance_needs_five_seeds_and_a_two_sided_t_test_below_005():
    assert not st.seed_test([5.0, 6.0, 7.0, 5.5]).significant  # p small, but four seeds
    assert st.seed_test([5.0, 6.0, 7.0, 5.5, 6.5]).significant
    assert not st.seed_test([5.0, 6.0, -7.0, 5.5, 6.5]).significant


def test_a_run_answering_one_class_is_flagged():
    assert st.answers_one_class(["True"] * 99 + ["False"])
    assert not st.answers_one_class(["True"] * 90 + ["False"] * 10)
    assert st.one_class_share(["a", "b", "b", "b"]) == 0.75


def test_the_example_bootstrap_is_centred_on_the_paired_difference():
    base = [dict((f"k{i}", i % 2 == 0) for i in range(400)) for _ in range(3)]
    better = [dict((k, v or int(k[1:]) % 4 == 1) for k, v in b.items()) for b in base]  # +25 points, every seed
    d, lo, hi = st.example_bootstrap(better, base)
    assert abs(d - 0.25) < 1e-9 and 0.2 < lo <= d <= hi < 0.3
    assert st.example_bootstrap(base, base) == (0.0, 0.0, 0.0)


def student_t4_cdf(t: float) -> float:
    """Student's t with 4 degrees of freedom in closed form (an independent check of the continued fraction)."""
    s = t * t / 4
    return 0.5 + 3 / 8 * t / math.sqrt(1 + s) * (1 - s / (3 * (1 + s)))


def test_the_one_sided_paired_t_at_four_degrees_of_freedom_matches_the_closed_form():
    """Five seeds: the confirmation's test. Per-seed +3.0, -0.5, +2.5, +1.5, +0.5: mean 1.4, sd sqrt(2.05),
    t = 2.1864; P(T4 > t) = 0.04703 by the closed form. The tabulated one-sided 5 % point at 4 df is 2.131847."""
    assert student_t4_cdf(2.131847) == pytest.approx(0.95, abs=1e-7)
    diffs = [3.0, -0.5, 2.5, 1.5, 0.5]
    mean, lo, hi, p, p_greater = st.paired_t(diffs)
    t = 1.4 / math.sqrt(2.05 / 5)
    assert mean == pytest.approx(1.4) and p_greater == pytest.approx(1 - student_t4_cdf(t), abs=1e-9)
    assert p_greater == pytest.approx(0.047033, abs=1e-6) and p == pytest.approx(2 * p_greater)
    assert st.t_quantile(0.95, 4) == pytest.approx(2.131847, abs=1e-5)


def test_a_lead_can_pass_the_one_sided_test_and_fail_the_two_sided_one():
    """The same five differences: one-sided p 0.047 < 0.05 (the confirmation's pre-registered test), two-sided
    p 0.094 > 0.05 (the study's 'significant'): the two rules must not be mixed in one report."""
    test = st.seed_test([3.0, -0.5, 2.5, 1.5, 0.5])
    assert test.t_p_greater < 0.05 < test.t_p
    assert not test.significant
    assert test.lo < 0 < test.hi  # the two-sided 95 % interval holds 0, as it must when two-sided p > 0.05
    assert st.seed_test([-3.0, 0.5, -2.5, -1.5, -0.5]).t_p_greater > 0.95  # a loss is far from 'greater'


def test_power_of_the_confirmations_test_at_the_selection_splits_seed_spread():
    """Amendment 1's power sentence: per-seed spread of the selection split's primary pair (sd 3.25 points),
    5 seeds, one-sided t at 0.05: a true +3 points is detected about half the time; no effect, 5 % of the time."""
    sd = 3.250128  # statistics.stdev([7.8, 4.5, 1.3])
    assert st.power_paired_t(0.0, sd, 5) == pytest.approx(0.05, abs=0.01)
    assert 0.45 < st.power_paired_t(3.0, sd, 5) < 0.6
    assert st.power_paired_t(10.0, sd, 5) > 0.99
