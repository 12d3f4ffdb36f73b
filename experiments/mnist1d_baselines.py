"""MNIST-1D baselines (Greydanus & Kobak 2020): one task of all ten classes, their recipe.

    continual run mnist1d_baselines                  # MLP 40-100-100-10 (residual), about 20 s
    continual run mnist1d_baselines --arg cnn        # their CNN, about 1 minute
    continual sweep mnist1d_baselines --arg cnn --seeds 10   # mean and SEM over 10 seeds

The recipe of the mnist1d repository: Adam, learning rate 1e-2, no weight decay, minibatches of
100, 6000 steps; MLP with two hidden layers of 100 units, the second with a skip connection
(h + relu(W h + b), their `MLPBase`; `--set model.residual=false` drops it); CNN of three
strided convolutions of 25 channels (kernels 5, 3, 3) and a linear read-out. Published test
accuracy: MLP about 68%, CNN about 94%. Ours, measured over seeds, are in
docs/reproductions.md.
"""

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
