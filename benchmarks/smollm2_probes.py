"""What SmolLM2-135M-Instruct knows before any fine-tuning: its exact match on the probe set.

    python benchmarks/smollm2_probes.py          # a few minutes on 2 CPU cores; fetches the GGUF

The probe questions of continual.data.probes, asked in the `pretrained_facts` stream's chat
format (a system message and demonstration turns), scored by greedy exact match (the answer's
tokens, then the end of turn) in one teacher-forced pass (`probe_matches`). Prints the score,
the score by kind, and the indices the experiment keeps (`probe_keep`).
"""

from collections import Counter

from continual.data import probes
from continual.data.smollm2 import load_smollm2
from continual.models.llama_weights import params_from_gguf
from continual.streams.pretrained import known_probes, pretrained_facts, probe_matches


def main() -> None:
    """Prints the base model's probe score."""
    spec, tensors, _ = load_smollm2()
    model, params = params_from_gguf(spec, tensors, context=256)
    stream = pretrained_facts(num_entities=2, num_sets=1, texts=("python",), tiny=True)
    matches = probe_matches(model.apply, params, stream)
    kept = known_probes(stream, matches)
    kinds, right = Counter(), Counter()
    for i, hit in zip(stream.probe_ids, matches.tolist(), strict=True):
        kind = probes.PROBES[i].kind
        kinds[kind] += 1
        right[kind] += hit
    print(f"exact match: {len(kept)} of {len(matches)}")
    print(", ".join(f"{k} {right[k]}/{n}" for k, n in kinds.items()))
    print(f"probe_keep: {kept}")


if __name__ == "__main__":
    main()
