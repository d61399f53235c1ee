"""The study's statistics, shared by the study, the budget selection and the report.

Seeds are the unit of evidence: a run's accuracy depends on its initialisation and data order far
more than on which of 2,000 examples it is scored on, so a difference between two arms is a sample
of one number per seed. The primary tests therefore work on the per-seed paired differences (a
paired t-interval, an exact sign-flip permutation test and an exact sign test); the bootstrap over
examples with the seeds held fixed is kept as a secondary column, because it answers a narrower
question (would these very runs rank the same on other examples?).

No scipy: the t distribution is the regularised incomplete beta function, computed by its continued
fraction (tested against tabulated quantiles in tests/scripts/test_statistics.py).
"""
from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass

# Fewer seeds than this never make a difference "significant" in our reports, whatever p says: with
# 3 seeds the seed spread itself is estimated from two degrees of freedom, and the exact tests
# cannot go below p = 0.25 (sign flips) or 0.125 (sign test, one-sided).
MIN_SEEDS_FOR_SIGNIFICANCE = 5
# A run that gives one answer to at least this share of the examples has not learned the task: it is
# flagged, and its task is left out of averages.
ONE_CLASS_SHARE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: int) -> float:
    """The t value below which a share `p` of the distribution lies (bisection on the survival function)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_sf(mid, df) > 1.0 - p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class SeedTest:
    """One comparison, seeds as the unit: `diffs` are arm − baseline per seed (in the caller's units)."""
    diffs: tuple[float, ...]
    mean: float
    lo: float  # 95 % paired t-interval (two-sided); nan with one seed
    hi: float
    t_p: float  # two-sided p of the paired t-test; nan with one seed or no spread
    t_p_greater: float  # one-sided p (H1: arm > baseline), the pre-registered confirmation's test
    flip_p: float  # exact two-sided sign-flip permutation p over seeds
    flip_p_greater: float  # its one-sided version (H1: arm > baseline)
    sign_p: float  # exact two-sided sign test p (ties dropped)

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def significant(self) -> bool:
        """Two-sided t-test at 0.05, and only with enough seeds (the exact tests are reported beside it:
        with 5 seeds their smallest two-sided p is 2/32, so they cannot be the gate)."""
        return self.n >= MIN_SEEDS_FOR_SIGNIFICANCE and self.t_p < 0.05


def paired_t(diffs: list[float], level: float = 0.95) -> tuple[float, float, float, float, float]:
    """Mean, t-interval at `level` and two- and one-sided (greater) p of paired differences."""
    n, mean = len(diffs), statistics.fmean(diffs)
    if n < 2:
        return mean, math.nan, math.nan, math.nan, math.nan
    se = statistics.stdev(diffs) / math.sqrt(n)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        return mean, mean, mean, p, (0.0 if mean > 0 else 1.0)
    t = mean / se
    return mean, mean - half, mean + half, 2 * t_sf(abs(t), n - 1), t_sf(t, n - 1)


def power_paired_t(effect: float, sd: float, n: int, alpha: float = 0.05, draws: int = 20000, seed: int = 0) -> float:
    """How often a one-sided paired t-test over `n` seeds rejects at `alpha` when the true mean difference is
    `effect` and seeds spread with standard deviation `sd` (normal differences; a seeded simulation)."""
    rng, critical = random.Random(seed), t_quantile(1 - alpha, n - 1)
    hits = 0
    for _ in range(draws):
        diffs = [rng.gauss(effect, sd) for _ in range(n)]
        hits += statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(n)) > critical
    return hits / draws


def sign_flip_p(diffs: list[float], greater: bool = False) -> float:
    """Exact permutation p: under 'no difference' each seed's sign is a coin flip, so count the 2^n
    sign patterns whose mean is at least as extreme as the observed one (|mean|, or mean if `greater`)."""
    stat = (lambda x: x) if greater else abs
    observed = stat(sum(diffs))
    count = sum(stat(sum(s * d for s, d in zip(signs, diffs))) >= observed - 1e-12
                for signs in itertools.product((1, -1), repeat=len(diffs)))
    return count / 2 ** len(diffs)


def sign_test_p(diffs: list[float]) -> float:
    """Exact two-sided sign test: how many seeds favour the arm, against Binomial(n, 1/2); ties dropped."""
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def seed_test(diffs: list[float]) -> SeedTest:
    mean, lo, hi, p, p_greater = paired_t(diffs)
    return SeedTest(tuple(diffs), mean, lo, hi, p, p_greater, sign_flip_p(diffs), sign_flip_p(diffs, greater=True),
                    sign_test_p(diffs))


def example_bootstrap(arm_runs: list[dict[str, bool]], base_runs: list[dict[str, bool]], resamples: int = 5000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Secondary: mean over seed pairs of (arm − baseline) accuracy and its 95 % percentile bootstrap
    interval over examples, seeds held fixed (the same resampled examples for every pair). It ignores
    how much a run depends on its seed, so it is narrower than the truth: never the headline."""
    keys = sorted(set.intersection(*(set(r) for r in arm_runs + base_runs)))
    diffs = [[int(a[k]) - int(b[k]) for k in keys] for a, b in zip(arm_runs, base_runs)]
    per_example = [sum(d[i] for d in diffs) / len(diffs) for i in range(len(keys))]
    rng, n = random.Random(seed), len(keys)
    boot = sorted(sum(per_example[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(per_example) / n, boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]


def one_class_share(predictions: list[str]) -> float:
    """The share of examples given the run's most common answer."""
    return Counter(predictions).most_common(1)[0][1] / len(predictions) if predictions else 0.0


def answers_one_class(predictions: list[str]) -> bool:
    return one_class_share(predictions) >= ONE_CLASS_SHARE
