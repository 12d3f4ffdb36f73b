"""Data sources: generated deterministically, cached, and repaired when the cache is corrupt."""

import numpy as np
import pytest

from continual.data import mnist1d, synthetic


@pytest.mark.slow
def test_mnist1d_is_generated_cached_and_regenerated_when_corrupt(tmp_path):
    x_train, y_train, x_test, y_test = mnist1d.load(cache=tmp_path)
    assert x_train.shape == (4000, 40) and x_test.shape == (1000, 40)
    assert sorted(set(y_train.tolist())) == list(range(10))
    cached = mnist1d.load(cache=tmp_path)
    assert all(
        np.array_equal(a, b)
        for a, b in zip((x_train, y_train, x_test, y_test), cached, strict=True)
    )
    (tmp_path / "mnist1d.npz").write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable .*; regenerating"):
        again = mnist1d.load(cache=tmp_path)
    assert np.array_equal(again[0], x_train)
    assert not list(tmp_path.glob("*.tmp*"))


def test_blobs_are_deterministic_under_a_seed():
    a, b = synthetic.blobs(seed=3), synthetic.blobs(seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], synthetic.blobs(seed=4)[0])
    with pytest.raises(ValueError):
        synthetic.blobs(spread=0)
