"""How sure an accuracy is: its 95% interval, whether it is above chance, and whether two rows
are told apart.

- One seed: the Wilson score interval of a binomial proportion over the test examples (the
  record's `test_examples`): right near 0 and 1, and for small splits, where the normal one is not.
- Several seeds: the Student t interval of the mean over seeds (mean ± t · std / sqrt(n)): seed
  to seed variation includes the test set's sampling noise and the training's.
- At chance: the interval reaches down to the majority-class rate of the same test examples, so
  the row is not significantly better than always answering the commonest class.
- Within noise: two rows whose difference is at most the root sum of squares of their intervals'
  half-widths (for one seed each, the two-proportion z-test at 5%).
"""

from __future__ import annotations

import math

import pandas as pd

Z = 1.959964  # the standard normal's 97.5% quantile: two-sided 95%
# Student t's 97.5% quantile for 1 to 30 degrees of freedom; beyond, a series in 1/df (error < 1e-4).
T_TABLE = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
           2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
           2.045, 2.042)
INTERVAL = ["ci_low", "ci_high", "at_chance"]  # the columns `with_intervals` adds


def t_quantile(df: int) -> float:
    """Student t's 97.5% quantile for `df` degrees of freedom."""
    if df <= len(T_TABLE):
        return T_TABLE[df - 1]
    return Z + (Z**3 + Z) / (4 * df) + (5 * Z**5 + 16 * Z**3 + 3 * Z) / (96 * df**2)


def wilson(p: float, n: float) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion `p` observed over `n` trials."""
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(cell: pd.Series) -> tuple[float, float]:
    """The 95% interval (percent) of an accuracy cell: `value` and `std` in percent over `n` seeds,
    each scored on `examples` test examples; NaNs where the records do not say enough."""
    n = 0 if pd.isna(cell["n"]) else int(cell["n"])
    if pd.isna(cell["value"]) or n == 0:
        return math.nan, math.nan
    if n == 1:
        if pd.isna(cell["examples"]) or cell["examples"] <= 0:
            return math.nan, math.nan  # records older than the count of test examples
        low, high = wilson(cell["value"] / 100, cell["examples"])
        return 100 * low, 100 * high
    half = t_quantile(n - 1) * cell["std"] / math.sqrt(n)
    return cell["value"] - half, cell["value"] + half


def with_intervals(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` (value and std in percent, n seeds, `examples` per seed, `majority` in percent) with
    each cell's 95% interval and whether it is at chance: its interval reaches the majority rate
    (or, with no interval, its value does not exceed it); NA where there is nothing to compare."""
    if cells.empty:
        return cells.assign(**{column: pd.Series(dtype=object) for column in INTERVAL})
    bounds = pd.DataFrame([interval(cell) for _, cell in cells.iterrows()], index=cells.index,
                          columns=INTERVAL[:2])
    lowest = bounds["ci_low"].fillna(cells["value"])
    at_chance = (lowest <= cells["majority"]).astype(object).where(lowest.notna() & cells["majority"].notna())
    return cells.assign(**bounds, at_chance=at_chance)


def half_width(cell: pd.Series) -> float:
    """Half the width of a cell's interval (NaN without one)."""
    return (cell["ci_high"] - cell["ci_low"]) / 2


def within_noise(a: pd.Series, b: pd.Series) -> bool:
    """Whether the accuracies of cells `a` and `b` differ by no more than their noise."""
    return abs(a["value"] - b["value"]) <= math.hypot(half_width(a), half_width(b))


def flagged(value: object) -> bool:
    """Whether a flag column's value (True, False or NA) is set."""
    return not pd.isna(value) and bool(value)
