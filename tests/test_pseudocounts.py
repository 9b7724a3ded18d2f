"""Pseudo counts for data shipped without counts (the Drosophila reference, the BDTNP atlas)."""

from __future__ import annotations

import numpy as np
import pytest

from opencellplm.data.pseudocounts import counts_from_intensities, counts_from_log2


def test_log2_values_come_back_as_the_counts_they_were_made_from():
    counts = np.array([[0, 1, 3, 10], [2, 0, 4, 6]], dtype=float)
    scale = np.array([[0.7], [0.05]])  # a different library scaling per cell
    values = np.round(np.log2(1 + counts * scale), 3)  # shipped rounded to 3 decimals
    recovered, note = counts_from_log2(values)
    # the second cell's smallest count is 2, so it comes back halved: counts up to a per-cell factor
    np.testing.assert_array_equal(recovered.toarray(), [[0, 1, 3, 10], [1, 0, 2, 3]])
    assert "pseudo counts" in note


def test_intensities_become_scaled_integers():
    recovered, note = counts_from_intensities(np.array([[0.0, 0.014, 1.2345]]), scale=100)
    np.testing.assert_array_equal(recovered.toarray(), [[0, 1, 123]])
    assert note == "pseudo counts: rint(100 * intensity)"


@pytest.mark.parametrize("values", [np.array([[-1.0, 2.0]]), np.array([[np.nan, 1.0]]), np.ones(3)])
def test_values_that_cannot_be_log2_values_are_refused(values):
    with pytest.raises(ValueError, match="finite, non-negative log2"):
        counts_from_log2(values)


def test_bad_intensities_or_scale_are_refused():
    with pytest.raises(ValueError, match="finite, non-negative values"):
        counts_from_intensities(np.array([[-0.5, 1.0]]))
    with pytest.raises(ValueError, match="scale must be positive"):
        counts_from_intensities(np.ones((2, 2)), scale=0)
