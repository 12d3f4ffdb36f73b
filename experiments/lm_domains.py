"""Domain-incremental language modelling: English -> Python -> Chinese news, one character LM.

    continual run lm_domains --name lm                    # six methods
    continual generate runs/lm_domains/lm --method replay --prompt "def " --show-top 3
    continual sweep lm_domains --method ewc --grid regularisers.ewc.strength=1e2:1e4:3
    continual run lm_domains --arg tiny                   # built-in lines, no download

Time: about 18 min on 2 CPU cores shared with other jobs (a fresh cache first fetches the
corpora: docs/data.md#text-corpora).
Results: docs/lm.md#measured-english--python--chinese-news

A small transformer learns each domain's characters in turn (one tokenizer over all three, rare
characters read as [unk]); the metric is bits per character on each domain's held-out windows
(lower is better), and next-token accuracy is recorded alongside (results.json "views"). EWC
uses the sampled Fisher of the token log-likelihoods; replay keeps a reservoir of earlier
windows; LwF distils the previous model's next-token distributions on the current batch; joint
trains on all three at once.
"""

ARGS = (None, "tiny")  # what --arg accepts (None: no --arg)
SMOKE = {"arg": "tiny", "set": ["train.steps=4", "train.eval_every=2"]}  # --smoke; the tests
TINY = {"context": 16, "train_windows": 32, "test_windows": 8, "min_count": 1, "test_fraction": 0.3}


def get_config(arg=None):
    """`arg`: None (the cached corpora: Shakespeare, CPython's stdlib, People's Daily 1998) or
    "tiny" (the corpora's built-in lines: no download, a model of context 16)."""
    if arg not in (None, "tiny"):
        raise ValueError(f"lm_domains takes no argument or 'tiny', got {arg!r}")
    stream = {
        "name": "text_domains",
        "domains": ["english", "python", "chinese_news"],
        "context": 64,
        "train_windows": 1024,
        "test_windows": 64,
        "min_count": 100,
        "test_fraction": 0.1,
        "tiny": False,
    }
    if arg == "tiny":
        stream.update(TINY, tiny=True)
    config = {
        "seed": 0,
        "stream": stream,
        "model": {
            "name": "transformer",
            "num_layers": 2,
            "d_model": 128,
            "num_heads": 4,
            "context": stream["context"],
        },
        "optimizer": {"name": "adam", "learning_rate": 2e-3},
        "train": {"steps": 200, "batch_size": 32, "eval_every": 50},
        "regularisers": {
            "ewc": {"strength": 15.625, "estimator": "sampled", "num_samples": 128},
            "l2": {"strength": 1.0},
            "replay": {"capacity": 512, "weight": 1.0, "batch_size": 32},
            "lwf": {"strength": 1.0, "temperature": 2.0},
        },
        "methods": {
            "naive": {},
            "ewc": {"use": ["ewc"]},
            "l2": {"use": ["l2"]},
            "replay": {"use": ["replay"]},
            "lwf": {"use": ["lwf"]},
            "joint": {"joint": True},
        },
        "run": [],
    }
    if arg == "tiny":
        config["regularisers"]["replay"].update(capacity=32, batch_size=8)
        config["regularisers"]["ewc"]["num_samples"] = 16
        config["train"].update(batch_size=8)
    return config
