"""MNIST-1D baselines (Greydanus & Kobak 2020): one task of all ten classes, their recipe.

    continual run mnist1d_baselines                  # their MLP (with its skip connection)
    continual run mnist1d_baselines --arg cnn        # their CNN
    continual sweep mnist1d_baselines --arg cnn --seeds 10   # mean and SEM over 10 seeds

Time: about 10 s (MLP) and about 1 minute (CNN) on 2 CPU cores, as the README measured them
(this docstring said about 20 s for the MLP); the sweeps' times are on the results page.
Results: docs/reproductions.md#mnist-1d-baselines-greydanus--kobak-2020

`--arg`: "mlp" (the default) or "cnn". The recipe of the mnist1d repository (Adam, no weight
decay; an MLP whose second hidden layer adds its input, their `MLPBase`, which
`--set model.residual=false` drops; a CNN of three strided convolutions and a linear read-out),
the published accuracies and ours are on the results page.
"""

ARGS = (None, "mlp", "cnn")  # what --arg accepts (None: no --arg)
SMOKE = {"arg": None, "set": ["train.steps=4", "train.eval_every=2"]}  # --smoke; the tests

MODELS = {
    "mlp": {"name": "mlp", "widths": [100, 100], "residual": True},
    "cnn": {"name": "cnn", "channels": [25, 25, 25], "kernels": [5, 3, 3], "strides": [2, 2, 2]},
}


def get_config(arg=None):
    """`arg`: "mlp" (default) or "cnn"."""
    model = arg or "mlp"
    if model not in MODELS:
        raise ValueError(f"mnist1d_baselines: --arg must be one of {', '.join(MODELS)}")
    return {
        "seed": 0,
        "stream": {"name": "split_mnist1d", "num_tasks": 1, "scenario": "class"},
        "model": dict(MODELS[model]),
        "optimizer": {"name": "adam", "learning_rate": 1e-2},
        "train": {"steps": 6000, "batch_size": 100, "eval_every": 500},
        "regularisers": {},
        "methods": {model: {}},
        "run": [],
    }
