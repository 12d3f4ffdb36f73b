"""Split MNIST-1D: five two-digit tasks of a dataset generated locally (no download).

    continual run split_mnist1d                           # class-incremental
    continual sweep split_mnist1d --method ewc --grid regularisers.ewc.strength=1e0:1e6:7 --seeds 4

Time: about 25 s on 2 CPU cores (the sweep's time is on the results page).
Results: docs/demos.md#split-mnist-1d (the sweep: docs/demos.md#an-ewc-sweep-on-split-mnist-1d)

Naive fine-tuning, EWC, replay and joint training; the stream of the sweep benchmark
(benchmarks/sweep_speed.py, docs/speed.md#sweeps).
"""

ARGS = (None,)  # what --arg accepts: nothing
SMOKE = {"arg": None, "set": ["train.steps=4", "train.eval_every=2"]}  # --smoke; the tests


def get_config(arg=None):
    """MLP 40-100-100-10, Adam 1e-3, batch 32, 500 steps per task; naive, EWC, replay, joint."""
    return {
        "seed": 0,
        "stream": {"name": "split_mnist1d", "num_tasks": 5, "scenario": "class"},
        "model": {"name": "mlp", "widths": [100, 100]},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "train": {"steps": 500, "batch_size": 32, "eval_every": 100},
        "regularisers": {
            "ewc": {"strength": 100.0, "estimator": "exact", "mode": "separate"},
            "replay": {"capacity": 500, "weight": 1.0, "batch_size": 32},
        },
        "methods": {
            "naive": {},
            "ewc": {"use": ["ewc"]},
            "replay": {"use": ["replay"]},
            "joint": {"joint": True},
        },
        "run": [],
    }
