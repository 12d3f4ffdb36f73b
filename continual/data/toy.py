"""The article's linear toy: f(x) = ax + b fitted to two points, then to a third."""

import numpy as np

# Task A: the two points the article fits first (a = 1, b = 4 fits both exactly).
TASK_A = ((2.0, 6.0), (3.0, 7.0))
# Task B: the new point; moving b alone to fit it gives b = 9 and forgets task A.
TASK_B = ((4.0, 13.0),)


def points(pairs) -> dict[str, np.ndarray]:
    """(x, y) pairs as {"x": (N, 1), "y": (N, 1)} float32 arrays."""
    xy = np.asarray(pairs, np.float32).reshape(-1, 2)
    return {"x": xy[:, :1], "y": xy[:, 1:]}
