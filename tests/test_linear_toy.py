"""The article's numbers, and EWC's exactness on quadratic losses."""

import numpy as np
import pytest

from continual.experiments import linear_toy

from helpers import final_params, run, toy_config


@pytest.fixture(scope="module")
def article():
    return run(linear_toy.get_config())


@pytest.mark.slow
def test_after_task_a_the_line_is_a1_b4(article):
    for name, r in article.items():
        if name == "joint":
            continue
        layer = r.params[0]["params"]["linear"]
        assert layer["kernel"][0][0] == pytest.approx(1.0, abs=1e-4), name
        assert layer["bias"][0] == pytest.approx(4.0, abs=1e-4), name
        assert r.matrix[0][0] < 1e-8  # both points of A fitted


def test_fine_tuning_b_alone_gives_b9_and_old_points_11_12(article):
    r = article["article"]
    a, b = final_params(r)
    assert a == pytest.approx(1.0, abs=1e-4)  # frozen
    assert b == pytest.approx(9.0, abs=1e-4)
    preds = [p[0] for p in r.probes[1]]
    np.testing.assert_allclose(preds, [11.0, 12.0, 13.0], atol=1e-4)
    assert r.matrix[1][0] == pytest.approx(25.0, abs=1e-3)  # both old points off by 5


def test_plain_fine_tuning_forgets_and_regularisers_forget_less(article):
    forgetting = {name: r.summary["forgetting"] for name, r in article.items() if name != "joint"}
    assert forgetting["naive"] > 5
    for name in ("l2", "ewc", "replay"):
        assert forgetting[name] < forgetting["naive"], name
    # Every sequential method fits the new point better than it fits the old ones after B.
    assert article["naive"].matrix[1][1] < 1e-6


def test_joint_is_least_squares_on_all_three_points(article):
    x = np.array([2.0, 3.0, 4.0])
    y = np.array([6.0, 7.0, 13.0])
    slope, intercept = np.polyfit(x, y, 1)
    a, b = final_params(article["joint"])
    assert a == pytest.approx(slope, abs=1e-3)
    assert b == pytest.approx(intercept, abs=1e-3)
    assert article["joint"].summary["forgetting"] is None  # one row: nothing to forget


def test_report_prints_the_article_numbers(article):
    from continual.streams import linear_toy as stream

    lines = linear_toy.report(article, stream())
    assert any("gives b = 9.0000" in line and "11.0000 and 12.0000" in line for line in lines)


def _joint_least_squares(tasks):
    xy = np.array([p for task in tasks for p in task], np.float64)
    slope, intercept = np.polyfit(xy[:, 0], xy[:, 1], 1)
    return slope, intercept


# Tasks of equal size whose inputs are centred (mean x = 0) have a diagonal Fisher, so the
# diagonal EWC penalty is the old tasks' loss exactly; with equal sizes the mean losses weigh
# like the joint sum.
CENTRED = (((-1.0, 1.0), (1.0, 3.0)), ((-1.0, 4.0), (1.0, 2.0)), ((-2.0, 0.0), (2.0, 9.0)))


# Over three tasks only online EWC stays exact: its one penalty is anchored at the minimum of
# everything so far (Huszar 2018), while separate mode anchors task B's penalty at the compromise
# reached on B, whose linear term it drops.
@pytest.mark.parametrize(
    ("tasks", "mode"), [(CENTRED[:2], "separate"), (CENTRED[:2], "online"), (CENTRED, "online")]
)
def test_ewc_with_exact_fisher_at_strength_1_is_joint_least_squares(tasks, mode):
    config = toy_config(tasks=tasks, steps=2000, methods=["ewc"])
    config["regularisers"]["ewc"].update(strength=1.0, estimator="exact", mode=mode, gamma=1.0)
    config["methods"]["ewc"] = {"use": ["ewc"]}
    a, b = final_params(run(config)["ewc"])
    slope, intercept = _joint_least_squares(tasks)
    assert a == pytest.approx(slope, abs=1e-5)
    assert b == pytest.approx(intercept, abs=1e-5)


def test_ewc_is_not_joint_when_the_fisher_is_not_diagonal(article):
    # On the article's points the off-diagonal Fisher term (x is not centred) is dropped by the
    # diagonal approximation, so EWC lands elsewhere than the least-squares line.
    a, _ = final_params(article["ewc"])
    slope, _ = _joint_least_squares((((2.0, 6.0), (3.0, 7.0)), ((4.0, 13.0),)))
    assert abs(a - slope) > 0.5
