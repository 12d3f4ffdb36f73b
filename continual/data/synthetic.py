"""Synthetic classification data needing no download: Gaussian blobs, deterministic by seed."""

import numpy as np


def blobs(
    num_classes: int = 10,
    dim: int = 20,
    train_per_class: int = 100,
    test_per_class: int = 50,
    spread: float = 1.0,
    seed: int = 0,
):
    """Class k is N(mu_k, spread^2 I), mu_k ~ N(0, 4 I); returns x/y train, then x/y test."""
    if min(num_classes, dim, train_per_class, test_per_class) < 1 or spread <= 0:
        raise ValueError("blobs needs positive sizes and spread")
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.standard_normal((num_classes, dim))

    def draw(per_class):
        y = np.repeat(np.arange(num_classes), per_class)
        x = means[y] + spread * rng.standard_normal((len(y), dim))
        order = rng.permutation(len(y))
        return x[order].astype(np.float32), y[order].astype(np.int32)

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    return x_train, y_train, x_test, y_test
