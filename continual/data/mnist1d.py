"""MNIST-1D (Greydanus & Kobak), generated locally and deterministically by the `mnist1d` package.

`make_dataset(get_dataset_args())`: 4000 train / 1000 test sequences of length 40, ten classes.
The arrays are cached as $CONTINUAL_DATA/mnist1d.npz (default ~/.cache/continual) because
generating them takes a few seconds; an unreadable cache file is regenerated.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

KEYS = ("x_train", "y_train", "x_test", "y_test")


def data_dir() -> Path:
    """Where downloaded and generated data are cached."""
    return Path(os.environ.get("CONTINUAL_DATA", Path.home() / ".cache" / "continual"))


def _generate() -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise FileNotFoundError(f"MNIST-1D needs the `mnist1d` package ({e})") from None
    # mnist1d seeds numpy's global generator: leave it as it was.
    state = np.random.get_state()  # noqa: NPY002
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return {
        "x_train": d["x"].astype(np.float32),
        "y_train": d["y"].astype(np.int32),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int32),
    }


def load(cache: Path | None = None) -> tuple[np.ndarray, ...]:
    """x_train (4000, 40), y_train, x_test (1000, 40), y_test."""
    path = (cache or data_dir()) / "mnist1d.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return tuple(f[k] for k in KEYS)
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"{path} is unreadable ({e}); regenerating it", stacklevel=2)
    arrays = _generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the regeneration next time
    return tuple(arrays[k] for k in KEYS)
