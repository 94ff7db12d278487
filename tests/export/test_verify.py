"""The fp32 parity rules on their own: a top-5 may differ from torch's only by ties."""

import numpy as np
import pytest

from export import verify


def test_identical_rankings_agree_with_no_ties():
    logits = np.array([[5.0, 1.0, 3.0, 2.0, 4.0, 0.0]])
    assert verify.top_k_agreement(logits, logits + 1e-7, 5, 1e-3) == (True, 0)


def test_a_swap_between_classes_tied_within_the_tolerance_is_a_tie():
    # classes 1 and 3 sit 1e-5 apart in torch; ORT's noise ranks them the other way round
    expected = np.array([[5.0, 2.00001, 3.0, 2.0, 4.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    got = np.array([[5.0, 1.99999, 3.0, 2.00001, 4.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert verify.top_k_agreement(expected, got, 5, 1e-3) == (True, 1)


def test_a_swap_between_distinct_classes_is_a_disagreement():
    expected = np.array([[5.0, 1.0, 3.0, 2.0, 4.0, 0.0]])
    got = np.array([[5.0, 1.0, 3.0, 2.0, 4.0, 0.0]])[:, [0, 1, 4, 3, 2, 5]]  # 3rd and 2nd place swapped
    agree, _ = verify.top_k_agreement(expected, got, 5, 1e-3)
    assert not agree


@pytest.mark.parametrize("k", [1, 5])
def test_only_the_top_k_counts(k):
    expected = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 1.0, 2.0]])
    got = expected[:, [0, 1, 2, 3, 4, 6, 5]]  # the last two swap, outside any top-5
    assert verify.top_k_agreement(expected, got, k, 1e-3) == (True, 0)
