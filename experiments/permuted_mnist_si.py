"""Synaptic intelligence on permuted MNIST, the protocol of Zenke, Poole & Ganguli (2017).

    continual run permuted_mnist_si                  # c = 0.1 and c = 0; hours on 2 CPU cores
    continual run permuted_mnist_si --set train.steps=468 --set train.eval_every=468  # 2 epochs

Ten tasks (the original images, then nine fixed pixel permutations, applied on the fly); one
shared 10-way head (domain-incremental); MLP 784-2000-2000-10; Adam lr 1e-3, moments not reset
between tasks; minibatches of 256; 20 epochs per task (4,680 steps of 256 = 19.97 epochs);
SI damping ξ = 0.1. Published average accuracy over the ten tasks after the last: c = 0.1 →
96.94%, c = 0 (plain fine-tuning) → 57.41%. The full protocol is about 4 × 10^14 FLOPs per
method. Ours (docs/reproductions.md): c = 0.1 → 96.84% (seed 0), c = 0 → 56.57 ± 0.78%
(seeds 0-3: 55.71, 56.77, 55.12, 58.67%; about an hour each), and 54.07% (seed 0) with their
Keras initialisation and shuffled epochs (`--set model.initializer=glorot --set
train.sampling=shuffle`: 20 epochs of 234 batches; measured with the sampling's first version,
whose epoch orders differ from today's).
"""


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
