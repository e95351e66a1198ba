"""Occlusion reasons and rank/decile/PSI arithmetic on tiny inputs with exactly known answers."""
from __future__ import annotations

import numpy as np
import pytest

from seqlake import scoring

L = 6
VIEW, CART = 2, 3


def _batch() -> dict[str, np.ndarray]:
    batch = {name: np.zeros((2, L), np.int32) for name in scoring.SEQUENCES}
    # User 0, oldest to newest: view c7, cart c7, view c9, view c7 (left-padded with two zeros).
    batch["event_type"][0] = [0, 0, VIEW, CART, VIEW, VIEW]
    batch["category"][0] = [0, 0, 7, 7, 9, 7]
    batch["item"][0] = [0, 0, 10, 10, 11, 12]
    batch["gap_bucket"][0] = [0, 0, 1, 10, 12, 3]  # after the cart: gaps < 2^10 s and < 2^1 s
    # User 1: one view of c9; nothing raises its score.
    batch["event_type"][1, -1], batch["category"][1, -1], batch["item"][1, -1] = VIEW, 9, 5
    batch["aggregates"] = np.zeros((2, len(scoring.AGGREGATES)), np.float32)
    batch["aggregates"][:, scoring.AGGREGATES.index("recency_days")] = [1.5, 0.2]
    return batch


def _forward(x):
    """A stand-in model: 0.1, plus 0.5 if a cart of category 7 is present, plus 0.01 per view of c7."""
    present = x["item"] != 0
    carted = ((x["event_type"] == CART) & (x["category"] == 7) & present).any(axis=1)
    views = ((x["event_type"] == VIEW) & (x["category"] == 7) & present).sum(axis=1)
    return (0.1 + 0.5 * carted + 0.01 * views).reshape(-1, 1)


EXPLAINER = scoring.Explainer(("", "", "view", "cart"), (None,) * 7 + ("c7", None, "c9"), 12, 0.005)


def test_occlusion_names_the_groups_that_raise_the_score_strongest_first():
    batch = _batch()
    base = np.asarray(_forward(batch)).reshape(-1)
    reasons = scoring.explain(_forward, batch, base, EXPLAINER)
    assert reasons[1] == []  # its only group has no impact
    assert [(r["event_type"], r["category"], r["events"], r["within_days"]) for r in reasons[0]] == [
        ("cart", "c7", 1, 2),  # 1.5 days recency + under 1024 s + 2 s of gaps after it: within 2 days
        ("view", "c7", 2, 2),  # the oldest of the two views is older still, but within 2 days
    ]
    assert [r["impact"] for r in reasons[0]] == pytest.approx([0.5, 0.02])
    assert reasons[0][0]["text"] == "carted category c7 once in the last 2 days"
    assert reasons[0][1]["text"] == "viewed category c7 twice in the last 2 days"


def test_only_the_newest_groups_are_tried_and_small_impacts_are_no_reason():
    batch = _batch()
    base = np.asarray(_forward(batch)).reshape(-1)
    newest_two = scoring.Explainer(EXPLAINER.event_types, EXPLAINER.categories, 2, 0.005)
    # The newest two groups of user 0 are (view, c7) and (view, c9): the cart is not tried.
    assert [(r["event_type"], r["category"]) for r in scoring.explain(_forward, batch, base, newest_two)[0]] == [
        ("view", "c7")]
    strict = scoring.Explainer(EXPLAINER.event_types, EXPLAINER.categories, 12, 0.05)
    assert [r["event_type"] for r in scoring.explain(_forward, batch, base, strict)[0]] == ["cart"]


def test_reason_texts_and_age_bounds():
    assert scoring.reason_text("remove_from_cart", None, 3, 1) == "removed an unlisted category from the cart 3 times in the last day"
    assert scoring.reason_text("purchase", "2053", 2, 5) == "bought in category 2053 twice in the last 5 days"
    ages = scoring.age_upper_bound_days(np.array([[0, 1, 3, 4]]), np.array([2.0]))
    # Newest event: the recency; each older one adds its successors' gap bounds (2 s, then 4 s).
    assert ages[0].tolist() == pytest.approx([2 + 6 / 86400, 2 + 6 / 86400, 2 + 4 / 86400, 2.0])


def test_psi_of_identical_shares_is_zero_and_grows_with_shift():
    even = np.full(10, 0.1)
    assert scoring.psi(even, even) == 0.0
    shifted = np.array([0.2, 0.2] + [0.075] * 8)
    assert scoring.psi(even, shifted) == pytest.approx(sum((a - 0.1) * np.log(a / 0.1) for a in shifted))
    assert scoring.psi(even, shifted) > 0.05
