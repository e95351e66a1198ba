"""The model's in-graph features on a hand-made sequence: exact recurrence flags and decayed
counts (what scoring and training both compute, so a mistake here is in every score)."""
from __future__ import annotations

import math

import numpy as np
import pytest

TYPES = {"view": 10, "cart": 11, "remove_from_cart": 12, "purchase": 13, "fav": 14}
A, B, NULL = 5, 6, 1  # item ids; 1 is the null index, 0 padding
CAT = 20


def test_recurrence_flags_on_a_hand_made_sequence():
    from seqlake.model import recurrence_flags

    # pad, view A, cart A, view A, cart B, remove A, view B, view of a null item
    item = np.array([[0, A, A, A, B, A, B, NULL]], dtype=np.int32)
    category = np.array([[0, CAT, CAT, CAT, CAT, CAT, CAT, NULL]], dtype=np.int32)
    types = np.array([[0, 10, 11, 10, 11, 12, 10, 10]], dtype=np.int32)
    flags = np.asarray(recurrence_flags(item, category, types, 8, TYPES))[0]
    # columns: open_cart, seen, category_carted, in_basket, basket_revisit
    expected = np.array([
        [0, 0, 0, 0, 0],  # padding
        [0, 0, 0, 0, 0],  # view A: nothing before it
        [0, 1, 0, 0, 0],  # cart A: A seen; A is removed later, so not in the basket
        [1, 1, 1, 0, 0],  # view A: A in an open cart then, but removed before the cutoff
        [0, 0, 1, 1, 0],  # cart B: B stays in the basket; a cart is not a revisit
        [1, 1, 1, 0, 0],  # remove A: A was open until this event
        [1, 1, 1, 1, 1],  # view B after its cart, B still in the basket: the signal
        [0, 0, 0, 0, 0],  # null item and category: unknown ids never match
    ], dtype=np.float32)
    np.testing.assert_array_equal(flags, expected)


def test_decayed_counts_sum_each_flag_over_events_by_age():
    from seqlake.model import DECAY_DAYS, decayed_counts

    flags = np.zeros((1, 4, 5), dtype=np.float32)
    flags[0, 1:, 4] = 1.0  # the last flag on three events, one of them padding
    age = np.array([[9.0, 6.0, 3.0, 0.0]], dtype=np.float32)
    item = np.array([[0, 0, A, B]], dtype=np.int32)  # position 1 is padding: it must not count
    out = np.asarray(decayed_counts(flags, age, item))[0].reshape(len(DECAY_DAYS), 5)
    for k, tau in enumerate(DECAY_DAYS):
        assert out[k, 4] == pytest.approx(math.log1p(math.exp(-3.0 / tau) + 1.0), rel=1e-6)
        assert (out[k, :4] == 0).all()
