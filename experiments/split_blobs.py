"""Split Gaussian blobs: five two-class tasks, an MLP, forgetting in the three scenarios.

    continual run split_blobs                           # class-incremental, every method
    continual run split_blobs --set stream.scenario=task
    continual run split_blobs --method replay --set regularisers.replay.selection=class_balanced

Time: about 12 s on 2 CPU cores, as the README measured it (this docstring said about 50 s; not
re-measured). Most of it is compiling one program per method (DER and DER++ share one).
Results: docs/demos.md#split-blobs

A classification stream that needs no download, generated deterministically from the seed.
"""

ARGS = (None,)  # what --arg accepts: nothing
SMOKE = {"arg": None, "set": ["train.steps=4", "train.eval_every=2"]}  # --smoke; the tests


def get_config(arg=None):
    """Five tasks of two classes each; Adam, minibatches of 32, 300 steps per task."""
    return {
        "seed": 0,
        "stream": {
            "name": "split_blobs",
            "num_tasks": 5,
            "scenario": "class",
            "num_classes": 10,
            "dim": 20,
            "train_per_class": 200,
            "test_per_class": 100,
            "spread": 1.5,
        },
        "model": {"name": "mlp", "widths": [64, 64]},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "train": {"steps": 300, "batch_size": 32, "eval_every": 50},
        "regularisers": {
            "l2": {"strength": 1.0},
            "ewc": {"strength": 1000.0, "estimator": "exact", "mode": "separate"},
            "si": {"strength": 1.0, "damping": 0.1},
            "mas": {"strength": 1.0},
            "replay": {
                "capacity": 200,
                "weight": 1.0,
                "batch_size": 32,
                "selection": "reservoir",  # or class_balanced: per_class (None: 200 / 10 classes)
                "per_class": None,
            },
            "lwf": {"strength": 1.0, "temperature": 2.0},
            "agem": {"capacity": 200, "batch_size": 64, "selection": "reservoir"},
            "gem": {"memory_per_task": 40, "margin": 0.0},
            "der": {"capacity": 200, "alpha": 0.5, "beta": 0.0, "batch_size": 32},
            "derpp": {"capacity": 200, "alpha": 0.5, "beta": 0.5, "batch_size": 32},
        },
        "methods": {
            "naive": {},
            "l2": {"use": ["l2"]},
            "ewc": {"use": ["ewc"]},
            "si": {"use": ["si"]},
            "mas": {"use": ["mas"]},
            "replay": {"use": ["replay"]},
            "ewc+replay": {"use": ["ewc", "replay"]},
            "lwf": {"use": ["lwf"]},
            "agem": {"use": ["agem"]},
            "gem": {"use": ["gem"]},
            "der": {"use": ["der"]},
            "der++": {"use": ["derpp"]},
            "joint": {"joint": True},
        },
        "run": [],
    }
