"""The article's question asked of a pretrained model: how should new facts get into SmolLM2?

    continual run pretrained_knowledge --name pk    # eleven ways; fetches the GGUF once
    continual generate runs/pretrained_knowledge/pk --method full --prompt "Where is Monba Palace?"
    continual run pretrained_knowledge --arg tiny   # a random tiny Llama: the test suite's size

Time: about 25 min on 2 CPU cores (compilation included).
Results: docs/pretrained.md#measured

Invented facts (place, year, founder, colour of invented landmarks, English) are injected into
SmolLM2-135M-Instruct in two sets, asked in its chat format after three demonstration turns and
answered by the bare value, in the demonstrations' style.
After each set the run measures
  1. exact match of the greedy answer on every set so far (the matrix);
  2. exact match on the probe questions (capitals, arithmetic, common knowledge) that the base
     model answers before any fine-tuning (stream.probe_keep "known": the column starts at 1);
  3. bits per token on held-out English and Python text.
Ways, one runner:
  joint                         every set at once, all parameters (the upper bound)
  full, partial, lora           one set after another: every parameter; the last two blocks;
                                LoRA adapters (rank 8) on the attention and MLP projections
  *_ewc                         ... with EWC, its Fisher from general text (English and Python
                                windows of the corpora's training split) at the pretrained
                                weights (methods.<name>.data "general")
  *_replay                      ... with a replay memory of that general text from the first step
  retrieval                     no weight update: TF-IDF retrieval puts the stored fact before
                                the question, the pretrained model reads it (retrieval.steps 0)
"""

import numpy as np

ARGS = (None, "tiny")
SMOKE = {  # --smoke and the tests: one method of each kind
    "arg": "tiny",
    "set": ["train.steps=2", "train.eval_every=2", "run=joint,partial_ewc,lora_replay,retrieval"],
}

WAYS = {  # which parameters move, and the learning rate that way needs
    "full": ({}, 1e-4),
    "partial": ({"train": {"last_blocks": 2}}, 3e-4),
    "lora": (
        {"train": {"lora": {"rank": 8, "alpha": 16.0, "targets": ["attn_q", "attn_v", "mlp_up"]}}},
        1e-3,
    ),
}


def methods() -> dict:
    """joint, each way naive / with EWC of general text / with replay of general text, and
    retrieval."""
    out = {"joint": {"joint": True, "optimizer": {"learning_rate": WAYS["full"][1]}}}
    for way, (spec, lr) in WAYS.items():
        base = {**spec, "optimizer": {"learning_rate": lr}}
        out[way] = base
        out[f"{way}_ewc"] = {**base, "use": ["ewc"], "data": "general"}
        out[f"{way}_replay"] = {**base, "use": ["replay"], "data": "general"}
    out["retrieval"] = {"retrieval": {"k": 1, "steps": 0}}
    return out


def get_config(arg=None):
    """`arg`: None (SmolLM2-135M-Instruct) or "tiny" (a random tiny Llama, no download)."""
    if arg not in ARGS:
        raise ValueError(f"pretrained_knowledge takes no argument or 'tiny', got {arg!r}")
    stream = {
        "name": "pretrained_facts",
        "tokenizer_path": None,  # the model's GGUF
        "num_entities": 4,
        "num_sets": 2,
        "languages": ["en"],
        "test_templates": "train",
        "seed": 0,
        "include_demo": False,  # invented landmarks only (the demo is the real Forbidden City)
        "probes": True,
        "probe_keep": "known",
        "texts": ["english", "python"],
        "text_windows_per_task": 4,
        "general_windows": 16,
        "context": 256,
        "shots": 3,
    }
    config = {
        "seed": 0,
        "stream": stream,
        "model": {"name": "smollm2", "context": 256},
        "optimizer": {"name": "adam", "learning_rate": 1e-4},
        # one evaluation per set, of the sets seen so far, in blocks of 8 questions or windows;
        # XLA's own CPU options compile SmolLM2 2.8x faster
        "train": {
            "steps": 16,
            "batch_size": 4,
            "eval_every": 16,
            "evaluate": "seen",
            "eval_batch": 8,
            "exact_compile": False,
        },
        "regularisers": {
            "ewc": {"strength": 1.0, "estimator": "empirical", "num_samples": 8},
            "replay": {"capacity": 32, "batch_size": 2},
        },
        "methods": methods(),
        "run": [],
    }
    if arg == "tiny":
        from continual.data.gguf_write import tiny_llama_file
        from continual.data.mnist1d import data_dir

        path = tiny_llama_file(data_dir())
        stream.update(tokenizer_path=path, tiny=True, shots=False, probe_keep=None)
        stream.update(text_windows_per_task=2, general_windows=4, context=2048)
        config["model"] = {"name": "gguf", "path": path}
        config["train"].update(steps=4, batch_size=4, eval_every=2, exact_compile=True)
        config["regularisers"]["ewc"]["num_samples"] = 4
        config["regularisers"]["replay"].update(capacity=8, batch_size=2)
    return config


def _final(r, view=None):
    """(matrix row after the last set, eval-only columns after it) of one method's results."""
    held = r.eval_only or {"tasks": [], "matrix": [[]], "views": {}}
    rows = held["matrix"] if view is None else held["views"].get(view, {}).get("matrix", [[]])
    return np.asarray(r.matrix, np.float64)[-1], dict(zip(held["tasks"], rows[-1], strict=True))


def injected_and_retained(r) -> tuple[np.ndarray, np.ndarray]:
    """Per row (after each set; a joint model's one row): mean exact match over the sets seen
    so far, and exact match on the probes (what pretraining taught)."""
    m = np.asarray(r.matrix, np.float64)
    held = r.eval_only
    probes = held["tasks"].index("probes")
    seen = [m[i, : (len(m[i]) if len(m) == 1 else i + 1)].mean() for i in range(len(m))]
    return np.array(seen), np.array([row[probes] for row in held["matrix"]], np.float64)


def report(results, stream) -> list[str]:
    """After the last set: exact match on each set, on the probes, bits per token on text."""
    kept = len(getattr(stream, "probe_ids", ()))
    lines = [
        f"after the last set (probes: the {kept} the base model answers): exact match on each "
        "fact set, on the probes; bits per token on held-out text (before -> after)"
    ]
    for name, r in results.items():
        sets, held = _final(r)
        _, bits = _final(r, stream.reading("bits_per_char"))
        first = r.eval_only["views"][stream.reading("bits_per_char")]["initial"]
        names = r.eval_only["tasks"]
        line = f"  {name:15s} sets " + " ".join(f"{v:.2f}" for v in sets)
        line += f"  probes {held.get('probes', float('nan')):.2f}"
        for text in ("english", "python"):
            if text in bits:
                line += f"  {text} {first[names.index(text)]:.2f}->{bits[text]:.2f}"
        lines.append(line)
    return lines


def plot(results, stream, plots_dir):
    """plots/injected_vs_retained.png: per method, the facts injected (mean exact match over the
    sets so far) against what pretraining taught that survives (the probes), after each set."""
    from continual.plots import _pyplot, save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, r in results.items():
        injected, retained = injected_and_retained(r)
        ax.plot(injected, retained, marker="o", ms=4, label=name)
        ax.annotate(name, (injected[-1], retained[-1]), fontsize=7)
    ax.set_xlabel("injected: exact match on the fact sets so far (mean)", fontsize=9)
    ax.set_ylabel("retained: exact match on the probes the base model knew", fontsize=9)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return [save(fig, plots_dir / "injected_vs_retained.png")]
