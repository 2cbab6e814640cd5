import numpy as np
import pytest

from core.evaluate.costs import CostError, CostModel, error_costs, parse_class_costs


def test_error_costs_price_each_confusion_and_scale_to_the_month():
    classes = ("ok", "defect")
    # a missed defect costs 100, a false alarm 5, any error 1 on top
    costs = CostModel(monthly_volume=10_000, error_cost=1.0, false_negative_cost={"defect": 100.0},
                      false_positive_cost={"defect": 5.0})
    m = costs.matrix(classes)
    assert m.tolist() == [[0.0, 6.0], [101.0, 0.0]]
    y_true = np.array([0] * 8 + [1] * 2)
    model = np.array([0] * 7 + [1] + [0, 1])  # one false alarm, one missed defect
    always_ok = np.zeros(10, int)
    rows = {r.model: r for r in error_costs(y_true, {"model": model, "always ok": always_ok}, classes, costs)}
    assert rows["model"].cost_per_image == pytest.approx((6 + 101) / 10)
    assert rows["model"].cost_per_month == pytest.approx(10_000 * 10.7)
    assert rows["model"].errors_per_month == pytest.approx(2_000)
    assert rows["always ok"].cost_per_month == pytest.approx(10_000 * 2 * 101 / 10)
    lo, hi = rows["model"].cost_per_month_interval
    assert lo <= rows["model"].cost_per_month <= hi


def test_cost_parsing_and_unknown_classes():
    assert parse_class_costs("5") == (5.0, {})
    assert parse_class_costs("1, cat=5,dog=2.5") == (1.0, {"cat": 5.0, "dog": 2.5})
    with pytest.raises(CostError, match="not a number"):
        parse_class_costs("cat=lots")
    with pytest.raises(CostError, match="unknown class"):
        CostModel(false_positive_cost={"cow": 1.0}).matrix(("cat", "dog"))


def test_a_cost_model_from_typed_text_refuses_negative_or_unknown_values():
    from core.evaluate.costs import cost_model

    m = cost_model(500, 1.0, "2,defect=5", "defect=100", " EUR ")
    assert m == CostModel(500.0, 1.0, {"defect": 5.0}, {"defect": 100.0}, 2.0, 0.0, "EUR")
    assert m.matrix(("ok", "defect")).tolist() == [[0.0, 1.0 + 5.0], [1.0 + 100.0 + 2.0, 0.0]]
    with pytest.raises(CostError, match="monthly volume"):
        cost_model(-1)
    with pytest.raises(CostError, match="false-negative cost of defect"):
        cost_model(10, 0, "", "defect=-3")
    with pytest.raises(CostError, match="not a number"):
        cost_model(10, 0, "lots")
