"""SmolLM2-135M in continual against llama.cpp's recorded outputs (tests/fixtures).

    python benchmarks/llamacpp_compare.py     # about a minute on 2 CPU cores; the GGUF is fetched

llama.cpp multiplies the Q4_1 / Q8_0 weights by activations it quantizes to 8 bits and keeps an f16
KV cache; continual runs float32 on the dequantized weights. So the two agree closely, not exactly:
this prints how closely, on the fixture's six prompts (tests/test_llama.py asserts bounds).
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from continual.data.smollm2 import load_smollm2
from continual.generate import make_generate
from continual.models.llama_weights import params_from_gguf

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "smollm2_llamacpp.json"


def main() -> None:
    """Prints the log-probability differences, top-1 agreement and greedy agreement."""
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    spec, tensors, _ = load_smollm2()
    model, params = params_from_gguf(spec, tensors, context=128)
    prompts = fixture["prompts"]
    width = max(len(p["ids"]) + len(p["greedy_ids"]) for p in prompts)
    x = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        x[i, : len(p["ids"]) + len(p["greedy_ids"])] = p["ids"] + p["greedy_ids"]
    logits = np.asarray(jax.jit(model.apply)(params, jnp.asarray(x)), np.float64)
    top = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    prompt_diffs, top_diffs, agree, misses = [], [], 0, []
    for i, p in enumerate(prompts):
        n = len(p["ids"])
        ours = [logits[i, j, p["ids"][j + 1]] - lse[i, j] for j in range(n - 1)]
        prompt_diffs += np.abs(np.array(ours) - p["prompt_logprobs"]).tolist()
        for q in p["positions"]:
            row, at = logits[i, q["position"]], q["position"]
            theirs = np.array(q["top_logits"]) - q["logsumexp"]
            top_diffs.append(np.abs(row[q["top_ids"]] - lse[i, at] - theirs).max())
            if int(row.argmax()) == q["top_ids"][0]:
                agree += 1
            else:
                misses.append(f"{p['name']}@{at}: llama.cpp's margin {theirs[0] - theirs[1]:.2f}")
    longest = max(len(p["ids"]) for p in prompts)
    prompt = np.zeros((len(prompts), longest), np.int32)
    for i, p in enumerate(prompts):
        prompt[i, : len(p["ids"])] = p["ids"]
    generate = jax.jit(make_generate(model, max_len=longest + 16, end_id=None, pad_id=None))
    lengths = jnp.array([len(p["ids"]) for p in prompts])
    out = np.asarray(generate(params, jnp.asarray(prompt), lengths).tokens_BxT)
    same = 0
    for i, p in enumerate(prompts):
        n, mine = len(p["ids"]), out[i, len(p["ids"]) : len(p["ids"]) + 16].tolist()
        same += int(np.cumprod(np.array(mine) == np.array(p["greedy_ids"])).sum())
        print(f"{p['name']:18s} greedy: {mine == p['greedy_ids']}")
    d = np.array(prompt_diffs)
    print(f"prompt log-probabilities: |ours - llama.cpp| mean {d.mean():.3f}, max {d.max():.3f}")
    print(f"top-20 log-probabilities: max |diff| {max(top_diffs):.3f}")
    print(f"top-1 at {len(top_diffs)} recorded positions: {agree} agree; " + "; ".join(misses))
    print(f"greedy tokens equal before the first difference: {same} of {16 * len(prompts)}")


if __name__ == "__main__":
    main()
