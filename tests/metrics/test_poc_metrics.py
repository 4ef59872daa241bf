"""PoC's metrics and ratio search (framework/metrics/poc_metrics.py) on hand-computed tiny cases."""

import math

import pytest
import torch

from framework.metrics.poc_metrics import mean_retention_curve, performance_at_ratio, ppe, two_stage_search


def test_ppe_is_the_mean_squared_error_over_all_pairs():
    # errors 0.1, -0.2, 0, 0.3 -> (0.01 + 0.04 + 0 + 0.09) / 4 = 0.035
    assert ppe([[0.9, 0.5], [1.0, 0.3]], [[0.8, 0.7], [1.0, 0.0]]) == pytest.approx(0.035)
    assert ppe(torch.ones(3, 4), torch.ones(3, 4)) == 0.0
    with pytest.raises(ValueError, match="same order"):
        ppe([0.1, 0.2], [0.1])


def test_mean_curve_is_the_column_mean_and_interpolates():
    grid = [0.5, 0.25, 1.0]                       # unsorted on purpose
    ret = torch.tensor([[0.6, 0.2, 0.9], [0.8, 0.4, 0.95], [0.7, 0.3, 1.0]])
    curve = mean_retention_curve(grid, ret)
    assert curve.ratios.tolist() == [0.25, 0.5, 1.0]
    assert torch.allclose(curve.values, ret.double().mean(0)[[1, 0, 2]])
    assert torch.allclose(curve(torch.tensor(grid, dtype=torch.float64)), ret.double().mean(0))
    # halfway between 0.25 (0.3) and 0.5 (0.7) -> 0.5; 0.75 between 0.7 and 0.95 -> 0.825
    assert curve(torch.tensor([0.375, 0.75])).tolist() == pytest.approx([0.5, 0.825])
    # outside the grid: the end values (no retention-1-at-ratio-1 assumption: the data say 0.95)
    assert curve(torch.tensor([0.01, 1.0])).tolist() == pytest.approx([0.3, 0.95])


def test_search_on_sqrt_curve_finds_the_smallest_fine_grid_ratio():
    predict = lambda r: r ** 0.5
    found = two_stage_search(predict, floor=0.8)      # true answer 0.8**2 = 0.64
    # coarse 12/19 = 0.6316 fails (sqrt 0.795), 13/19 passes; fine step 1/361: (228 + j)/361 >= 0.64 -> j = 4
    assert found == pytest.approx(232 / 361)
    assert 0.64 <= found < 0.64 + 1 / 19 ** 2
    assert predict(torch.tensor(found)) >= 0.8
    assert predict(torch.tensor(found - 1 / 361)) < 0.8   # the fine grid point just below fails


@pytest.mark.parametrize("floor", [0.05, 0.3, 0.55, 0.8, 0.97, 0.999])
@pytest.mark.parametrize("power", [0.3, 1.0, 2.5])
def test_search_precision_and_never_below_floor(floor, power):
    predict = lambda r: torch.as_tensor(r, dtype=torch.float64) ** power
    found = two_stage_search(predict, floor)
    true = floor ** (1 / power)
    assert float(predict(torch.tensor(found))) >= floor
    assert true - 1e-12 <= found <= true + 1 / 361 + 1e-12


def test_search_counts_calls_and_grid_points():
    seen = []

    def predict(r):
        seen.append(r.clone())
        return (r >= 0.5).double()

    assert two_stage_search(predict, 0.5, points=4) == pytest.approx(0.52)  # 1/5 grid, then 1/25 steps
    assert [len(s) for s in seen] == [5, 4]
    assert seen[0].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert seen[1].tolist() == pytest.approx([0.44, 0.48, 0.52, 0.56])


def test_search_first_coarse_point_brackets_from_zero_and_fallbacks():
    assert two_stage_search(lambda r: torch.ones_like(r), 0.9) == pytest.approx(1 / 361)
    assert two_stage_search(lambda r: r * 0 + 0.5, 0.9) == 1.0          # nothing meets the floor
    # only ratio 1.0 passes -> bracket (18/19, 1]; no fine point passes -> 1.0 itself
    assert two_stage_search(lambda r: (r >= 1.0).double(), 0.9) == 1.0


def test_performance_at_ratio_by_hand():
    # x = 1 - ratio = [0, 0.5, 0.75]; trapezoids 0.5*(0.9+0.8)/2 + 0.25*(0.8+0.5)/2 = 0.425 + 0.1625
    assert performance_at_ratio([1.0, 0.8, 0.5], [1.0, 0.5, 0.25], [0.9, 0.8, 0.5]) == pytest.approx(0.5875)
    # order does not matter; tied x are merged to their mean score (0.6 and 1.0 -> 0.8)
    assert performance_at_ratio([0.5, 0.8, 0.8, 1.0], [0.25, 0.5, 0.5, 1.0],
                                [0.5, 0.6, 1.0, 0.9]) == pytest.approx(0.5875)
    # a constant score s over the whole axis gives s; one distinct point gives 0
    assert performance_at_ratio([0, 1], [0.0, 1.0], [0.7, 0.7]) == pytest.approx(0.7)
    assert performance_at_ratio([0.2, 0.9], [0.4, 0.4], [0.7, 0.9]) == 0.0
    with pytest.raises(ValueError, match="one achieved ratio"):
        performance_at_ratio([0.1], [0.5, 0.6], [0.1, 0.2])
    assert not math.isnan(performance_at_ratio([0.1, 0.2], [0.5, 0.6], [0.1, 0.2]))


def test_paired_ppe_difference_by_hand():
    from framework.metrics.poc_metrics import paired_ppe_difference

    target = [[1.0, 0.5], [1.0, 0.0], [0.0, 0.0]]
    a = [[1.0, 0.5], [1.0, 0.2], [0.0, 0.0]]      # squared errors per context: 0, 0.02, 0
    b = [[0.8, 0.5], [1.0, 0.0], [0.0, 0.4]]      # 0.02, 0, 0.08
    out = paired_ppe_difference(a, b, target)
    diffs = [-0.02, 0.02, -0.08]
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert out["difference"] == pytest.approx(mean)
    assert out["difference"] == pytest.approx(ppe(a, target) - ppe(b, target))
    assert out["stderr"] == pytest.approx(std / math.sqrt(3))
    assert out["share_contexts_a_lower"] == pytest.approx(2 / 3) and out["contexts"] == 3
    with pytest.raises(ValueError, match="N >= 2"):
        paired_ppe_difference([[1.0]], [[1.0]], [[1.0]])
