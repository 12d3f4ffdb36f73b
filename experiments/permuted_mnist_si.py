"""Synaptic intelligence on permuted MNIST, the protocol of Zenke, Poole & Ganguli (2017).

    continual run permuted_mnist_si                  # both methods: si, then c0
    continual run permuted_mnist_si --method c0      # c = 0: fine-tuning, same optimizer
    continual run permuted_mnist_si --set train.steps=468 --set train.eval_every=468  # 2 epochs

Time: hours on 2 CPU cores (each run's time is on the results page).
Results: docs/reproductions.md#permuted-mnist-with-si-zenke-poole--ganguli-2017

Ten tasks (the original images, then nine fixed pixel permutations, applied on the fly); one
shared 10-way head (domain-incremental); their MLP, Adam with moments not reset between tasks,
their batch size and epochs per task, SI's damping and strengths as published.
`--set model.initializer=glorot --set train.sampling=shuffle` starts and samples as their Keras
code does.
"""

ARGS = (None,)  # what --arg accepts: nothing
SMOKE = {"arg": None, "set": ["train.steps=4", "train.eval_every=2"]}  # --smoke; the tests


def get_config(arg=None):
    """`si` (c = 0.1) and `c0` (c = 0, i.e. fine-tuning with the same optimizer)."""
    return {
        "seed": 0,
        "stream": {"name": "permuted", "source": "mnist", "num_tasks": 10, "scenario": "domain"},
        "model": {"name": "mlp", "widths": [2000, 2000]},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "train": {"steps": 4680, "batch_size": 256, "eval_every": 468},
        "regularisers": {"si": {"strength": 0.1, "damping": 0.1}},
        "methods": {"si": {"use": ["si"]}, "c0": {}},
        "run": [],
    }
