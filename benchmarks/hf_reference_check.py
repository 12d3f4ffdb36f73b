"""Independent check of continual.models.llama_weights against Hugging Face's LlamaForCausalLM.

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch==2.13.0 transformers numpy
    /tmp/hfvenv/bin/python benchmarks/hf_reference_check.py export /tmp/hf.npz  # tiny Llamas
    python benchmarks/hf_reference_check.py compare /tmp/hf.npz   # ours (JAX): logits + greedy

    /tmp/hfvenv/bin/pip install gguf
    /tmp/hfvenv/bin/python benchmarks/hf_reference_check.py export-gguf /tmp/hf_smol.npz
    python benchmarks/hf_reference_check.py compare-gguf /tmp/hf_smol.npz  # the real SmolLM2

Not part of the test run (it needs torch and transformers, which the project does not depend on).
export-gguf lets transformers load the cached SmolLM2 GGUF itself (its own dequantization and
row un-permutation) and records its logits on the llama.cpp fixture's sequences.

export builds tiny random LlamaForCausalLM models, writes their weights under GGUF tensor names
with the Q/K row permutation that GGUF converters apply (written here from the converter's
description: per head, rows [first half, second half] -> interleaved pairs), plus HF's logits on
a random sequence and HF's greedy continuation (its own KV cache) of a prompt.
"""

import json
import os
import sys

import numpy as np

CONFIGS = {
    "gqa_tied": dict(heads=4, kv=2, tied=True),
    "gqa_untied": dict(heads=4, kv=2, tied=False),
    "mha_tied": dict(heads=4, kv=4, tied=True),
    "mqa_untied": dict(heads=4, kv=1, tied=False),
}
VOCAB, LAYERS, WIDTH, FFN, CTX, SEQ, PROMPT, NEW = 256, 2, 64, 160, 128, 48, 8, 40


def converter_permute(w, n_head):
    """What GGUF converters do to attn_q / attn_k rows (per head: halves -> interleaved pairs)."""
    rows, d = w.shape
    k = rows // n_head
    return w.reshape(n_head, 2, k // 2, d).transpose(0, 2, 1, 3).reshape(rows, d)


def export(path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out, meta = {}, {}
    for name, c in CONFIGS.items():
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=c["heads"],
            num_key_value_heads=c["kv"],
            rope_theta=1e5,
            rms_norm_eps=1e-5,
            tie_word_embeddings=c["tied"],
            max_position_embeddings=CTX,
            attention_bias=False,
            mlp_bias=False,
            attn_implementation="eager",
        )
        model = LlamaForCausalLM(cfg).float().eval()
        with torch.no_grad():  # random weights large enough that every part matters
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1 + 0.3 * torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p) * (0.5 / p.shape[-1] ** 0.5 if p.ndim == 2 else 1))
            emb = model.model.embed_tokens.weight
            emb.copy_(torch.randn_like(emb))
        sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
        g = {
            "token_embd.weight": sd["model.embed_tokens.weight"],
            "output_norm.weight": sd["model.norm.weight"],
        }
        if not c["tied"]:
            g["output.weight"] = sd["lm_head.weight"]
        for i in range(LAYERS):
            p = f"model.layers.{i}."
            g[f"blk.{i}.attn_norm.weight"] = sd[p + "input_layernorm.weight"]
            g[f"blk.{i}.attn_q.weight"] = converter_permute(
                sd[p + "self_attn.q_proj.weight"], c["heads"]
            )
            g[f"blk.{i}.attn_k.weight"] = converter_permute(
                sd[p + "self_attn.k_proj.weight"], c["kv"]
            )
            g[f"blk.{i}.attn_v.weight"] = sd[p + "self_attn.v_proj.weight"]
            g[f"blk.{i}.attn_output.weight"] = sd[p + "self_attn.o_proj.weight"]
            g[f"blk.{i}.ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
            g[f"blk.{i}.ffn_gate.weight"] = sd[p + "mlp.gate_proj.weight"]
            g[f"blk.{i}.ffn_up.weight"] = sd[p + "mlp.up_proj.weight"]
            g[f"blk.{i}.ffn_down.weight"] = sd[p + "mlp.down_proj.weight"]
        for k, v in g.items():
            out[f"{name}/t/{k}"] = v
        ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out[f"{name}/ids"] = ids.numpy()
            out[f"{name}/logits"] = model(ids).logits.float().numpy()
            gen = model.generate(
                ids[:1, :PROMPT],
                max_new_tokens=NEW,
                do_sample=False,
                min_new_tokens=NEW,
                eos_token_id=None,
                pad_token_id=0,
            )
            out[f"{name}/greedy"] = gen.numpy()
        meta[name] = c
    out["meta"] = np.array(json.dumps(meta))
    np.savez(path, **out)
    print("exported", list(CONFIGS))


def compare(path):
    from types import SimpleNamespace

    import jax
    import jax.numpy as jnp

    from continual.generate import make_generate
    from continual.models.llama_weights import params_from_gguf

    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    worst = 0.0
    for name, c in meta.items():
        spec = SimpleNamespace(
            vocab_size=VOCAB,
            num_layers=LAYERS,
            d_model=WIDTH,
            num_heads=c["heads"],
            num_kv_heads=c["kv"],
            mlp_width=FFN,
            rope_base=1e5,
            norm_eps=1e-5,
            context_length=CTX,
            head_dim=WIDTH // c["heads"],
            tied=c["tied"],
        )
        pre = f"{name}/t/"
        tensors = {k[len(pre) :]: data[k] for k in data.files if k.startswith(pre)}
        model, params = params_from_gguf(spec, tensors, context=CTX)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
        same = jax.tree.map(lambda a, b: a.shape == b.shape, shapes, params)
        assert all(jax.tree.leaves(same)), name
        logits = np.asarray(jax.jit(model.apply)(params, jnp.asarray(data[f"{name}/ids"])))
        ref = data[f"{name}/logits"]
        diff = float(np.abs(logits - ref).max())
        worst = max(worst, diff)
        greedy = data[f"{name}/greedy"]
        gen = make_generate(model, max_len=greedy.shape[1], end_id=None, pad_id=None)
        out = jax.jit(gen)(params, jnp.asarray(greedy[:, :PROMPT]), jnp.array([PROMPT]))
        ours = np.asarray(out.tokens_BxT)
        gen_nc = make_generate(
            model, max_len=greedy.shape[1], end_id=None, pad_id=None, use_cache=False
        )
        ours_nc = np.asarray(
            jax.jit(gen_nc)(params, jnp.asarray(greedy[:, :PROMPT]), jnp.array([PROMPT])).tokens_BxT
        )
        agree = int((ours == greedy).all(0).cumprod().sum())
        print(
            f"{name}: max |logit diff| {diff:.2e} (logit scale {np.abs(ref).max():.1f}); "
            f"greedy {agree}/{greedy.shape[1]} tokens equal HF (cached), "
            f"cached == uncached: {bool((ours == ours_nc).all())}"
        )
        assert (ours == greedy).all(), (ours, greedy)
    print(f"worst max |logit diff| {worst:.2e}")


FIXTURE = "tests/fixtures/smollm2_llamacpp.json"


def export_gguf(path):
    from pathlib import Path

    import torch
    from transformers import LlamaForCausalLM

    cache = Path(os.environ.get("CONTINUAL_DATA", Path.home() / ".cache" / "continual"))
    gguf = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"  # as continual.data.smollm2 caches it
    model = LlamaForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32
    ).eval()
    out = {}
    with torch.no_grad():
        for p in json.load(open(FIXTURE))["prompts"]:
            out[p["name"]] = model(torch.tensor([p["ids"] + p["greedy_ids"]])).logits[0].numpy()
    np.savez(path, **out)
    print("exported", list(out))


def compare_gguf(path):
    import jax
    import jax.numpy as jnp

    from continual.data.smollm2 import load_smollm2
    from continual.models.llama_weights import params_from_gguf

    spec, tensors, _ = load_smollm2()
    model, params = params_from_gguf(spec, tensors, context=128)
    data = np.load(path)
    worst = 0.0
    for p in json.load(open(FIXTURE))["prompts"]:
        ids = jnp.asarray([p["ids"] + p["greedy_ids"]])
        ours = np.asarray(jax.jit(model.apply)(params, ids))[0]
        diff = float(np.abs(ours - data[p["name"]]).max())
        worst = max(worst, diff)
        print(f"{p['name']}: max |logit diff| {diff:.2e} (scale {np.abs(ours).max():.1f})")
    print(f"worst max |logit diff| {worst:.2e}")


if __name__ == "__main__":
    modes = {"export": export, "compare": compare, "export-gguf": export_gguf}
    {**modes, "compare-gguf": compare_gguf}[sys.argv[1]](sys.argv[2])
