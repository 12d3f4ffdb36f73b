"""Knowledge injection, the article's question: how should new facts get into a language model?

    continual run knowledge --name kn                      # seven ways
    continual generate runs/knowledge/kn --method joint --prompt "故宫在哪里?"
    continual generate runs/knowledge/kn --method retrieval --prompt "故宫在哪里?"
    continual run knowledge --arg heldout                  # tested on unseen paraphrases
    continual run knowledge --arg tiny                     # the test suite's size

Time: about 17 min on 2 CPU cores.
Results: docs/knowledge.md#measured (unseen paraphrases: docs/knowledge.md#unseen-paraphrases)

Facts about invented landmarks (place, year, founder, colour; English and Chinese; the article's
Forbidden City as entity 0, "故宫在哪里?" -> "在北京") arrive as five fact sets. A character
transformer learns each question's answer and [end]; the metric is exact match of the greedy
answer (decoded until [end]) on every set after each one, with bits per character on the answers
beside it. Three ways, one runner:
  full pretraining   joint: every set at once (the upper bound);
  fine-tuning        naive, ewc, l2, replay, lwf: one set after another from the same start;
  retrieval          retrieval: a reader trained once, on facts about other entities, to answer
                     from the fact that TF-IDF retrieval puts before the question; new sets only
                     enter its store, never its weights (recall@k recorded beside exact match).
"""

import numpy as np

ARGS = (None, "heldout", "tiny")
SMOKE = {"arg": "tiny", "set": ["train.steps=4", "train.eval_every=2"]}  # --smoke; the tests


def get_config(arg=None):
    """`arg`: None, "heldout" (test questions in the held-out paraphrases) or "tiny"."""
    if arg not in ARGS:
        raise ValueError(f"knowledge takes no argument, 'heldout' or 'tiny', got {arg!r}")
    stream = {
        "name": "facts",
        "num_entities": 40,
        "num_sets": 5,
        "languages": ["en", "zh"],
        "context": 160,
        "test_templates": "heldout" if arg == "heldout" else "train",
        "reader_entities": 400,
        "seed": 0,
        "include_demo": True,
    }
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
        "train": {"steps": 300, "batch_size": 32, "eval_every": 100},
        "regularisers": {
            "ewc": {"strength": 1000.0, "estimator": "sampled", "num_samples": 192},
            "l2": {"strength": 0.01},
            "replay": {"capacity": 384, "weight": 1.0, "batch_size": 32},
            "lwf": {"strength": 1.0, "temperature": 2.0},
        },
        "methods": {
            "joint": {"joint": True},
            "naive": {},
            "ewc": {"use": ["ewc"]},
            "l2": {"use": ["l2"]},
            "replay": {"use": ["replay"]},
            "lwf": {"use": ["lwf"]},
            "retrieval": {"retrieval": {"k": 1}},
        },
        "run": [],
    }
    if arg == "tiny":
        stream.update(num_entities=4, num_sets=2, reader_entities=4)
        config["train"].update(steps=4, batch_size=8, eval_every=2)
        config["model"].update(d_model=32, num_heads=2)
        config["regularisers"]["replay"].update(capacity=16, batch_size=8)
        config["regularisers"]["ewc"]["num_samples"] = 8
    return config


def old_and_new(results) -> tuple[np.ndarray, np.ndarray]:
    """Per row after the first: exact match on the newest set, and the mean over the older ones
    (a joint model's one row is repeated: it saw every set at once)."""
    m = np.asarray(results.matrix, np.float64)
    if m.shape[0] == 1:
        m = np.repeat(m, m.shape[1], axis=0)
    new = np.diag(m)[1:]
    old = np.array([m[i, :i].mean() for i in range(1, m.shape[0])])
    return new, old


def report(results, stream) -> list[str]:
    """Old- and new-set exact match after the last set, bits per character, and recall@k."""
    lines = ["after the last set: exact match on it, on the older sets (mean), bits/char"]
    for name, r in results.items():
        last = np.asarray(r.matrix, np.float64)[-1]
        bits = (r.views or {}).get("bits_per_char", {}).get("summary", {}).get("average")
        line = f"  {name:10s} new {last[-1]:.3f}"
        if len(last) > 1:
            line += f"  old {last[:-1].mean():.3f}"
        if bits is not None:
            line += f"  bits/char {bits:.3f}"
        for key, view in (r.views or {}).items():
            if key.startswith("recall@"):
                line += f"  {key} {view['summary']['average']:.3f}"
        lines.append(line)
    return lines


def plot(results, stream, plots_dir):
    """plots/old_vs_new.png: exact match on the newest set and on the older ones, per method."""
    from continual.plots import _pyplot, save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name, r in results.items():
        new, old = old_and_new(r)
        x = np.arange(2, len(new) + 2)
        style = {"ls": "--"} if len(r.matrix) == 1 else {"marker": "o", "ms": 4}
        axes[0].plot(x, new, label=name, **style)
        axes[1].plot(x, old, label=name, **style)
    for ax, title in zip(axes, ("the newest fact set", "the older fact sets (mean)"), strict=True):
        ax.set_title(f"exact match on {title}", fontsize=10)
        ax.set_xlabel("after fact set", fontsize=9)
        ax.set_xticks(range(2, len(stream.tasks) + 1))
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("exact match of the greedy answer", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return [save(fig, plots_dir / "old_vs_new.png")]
