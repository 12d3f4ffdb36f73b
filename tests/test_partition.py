"""Fine-tuning part of a model: a partition of its params into trainable and frozen (all, paths,
last blocks, LoRA adapters), through the one runner on a tiny random llama GGUF that the runner
reads as a pretrained model; every regulariser, the optimizer, sweeps and checkpoints see only
the trainable part."""

import copy
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import models, reload, runner, streams
from continual import sweep as sw
from continual.cli import main
from continual.config import ConfigError
from continual.data.gguf import LlamaSpec
from continual.data.gguf_write import write_tiny_llama
from continual.experiments import linear_toy
from continual.loop import Interrupted
from continual.models import Transformer
from continual.models.partition import Base, Partition, bind, parse_train, taking_base
from continual.program import compile_program
from continual.types import Stream, Task

VOCAB = 280
SPEC = LlamaSpec(
    vocab_size=VOCAB,
    num_layers=2,
    d_model=16,
    num_heads=4,
    num_kv_heads=2,
    mlp_width=32,
    rope_base=10000.0,
    norm_eps=1e-5,
    context_length=32,
    head_dim=4,
    tied=True,
)
LORA = {"lora": {"rank": 2, "alpha": 4.0, "targets": ["attn_q", "attn_v", "mlp_down"]}}


def token_stream(num_tasks: int = 2, vocab: int = VOCAB, length: int = 8) -> Stream:
    """Next-token windows over a short repeating pattern of token ids per task (ids >= 1)."""
    rng = np.random.default_rng(0)
    tasks = []
    for t in range(num_tasks):
        pattern = rng.integers(1, vocab, size=3 + t)

        def windows(n, pattern=pattern):
            starts = rng.integers(0, len(pattern), n)
            seq = pattern[(starts[:, None] + np.arange(length + 1)[None]) % len(pattern)]
            return {"x": seq[:, :-1].astype(np.int32), "y": seq[:, 1:].astype(np.int32)}

        tasks.append(Task(t, f"pattern{t}", windows(16), windows(4), np.ones(vocab, bool)))
    return Stream("tokens", tuple(tasks), "domain", "next_token", vocab)


@pytest.fixture(scope="module", autouse=True)
def tokens_stream():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(streams.STREAMS, "tokens", token_stream)
        yield


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama(path, SPEC, seed=0)
    return path


def config(path, methods: dict, steps: int = 4) -> dict:
    return runner.with_defaults(
        {
            "seed": 0,
            "stream": {"name": "tokens", "vocab": VOCAB},
            "model": {"name": "gguf", "path": str(path), "context": 8},
            "optimizer": {"name": "adam", "learning_rate": 1e-2},
            "train": {"steps": steps, "batch_size": 4, "eval_every": 2},
            "regularisers": {
                "ewc": {"strength": 10.0, "estimator": "sampled", "num_samples": 8},
                "replay": {"capacity": 8, "batch_size": 4},
            },
            "methods": methods,
            "run": [],
            "checkpoint": {"enabled": False},
        }
    )


@functools.cache
def tiny_transformer(gqa: bool):
    """A two-block transformer: GQA with SwiGLU and an untied head, or fused qkv with GELU."""
    if gqa:
        model = Transformer(
            vocab_size=11, num_layers=2, d_model=8, num_heads=4, num_kv_heads=2, head_dim=4,
            mlp="swiglu", mlp_width=12, tied=False, context=6,
        )  # fmt: skip
    else:
        model = Transformer(vocab_size=11, num_layers=2, d_model=8, num_heads=2, context=6)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 11, (3, 6)), jnp.int32)
    return model, jax.jit(model.init)(jax.random.key(0), tokens), tokens


def recorded(template, values):
    """Recorded params (nested lists in Results.params) as arrays shaped like `template`."""
    return jax.tree.map(lambda t, v: jnp.asarray(v, t.dtype), template, values)


def paths_of(tree) -> set[str]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def same_leaves(a, b) -> bool:
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    return [p for p, _ in la] == [p for p, _ in lb] and all(
        np.array_equal(x, y) for (_, x), (_, y) in zip(la, lb, strict=True)
    )


PARTITIONS = [
    parse_train("all"),
    parse_train({"paths": ["mlp", "final_norm"]}),
    parse_train({"last_blocks": 1}),
    parse_train({"lora": {"rank": 2, "alpha": 3.0, "targets": ["attn_out", "mlp_down"]}}),
]


@pytest.mark.parametrize("part", PARTITIONS, ids=lambda p: p.kind)
def test_split_then_merge_gives_the_params_back(part):
    model, params, tokens = tiny_transformer(gqa=True)
    trainable, frozen = part.split(params, jax.random.key(3))
    assert same_leaves(part.merge(trainable, frozen), params)
    if part.kind in ("paths", "last_blocks"):  # a partition of the leaves
        assert paths_of(trainable) | paths_of(frozen) == paths_of(params)
        assert not paths_of(trainable) & paths_of(frozen)
    if part.kind == "last_blocks":  # the last block and what follows it
        top = {p for p in paths_of(params) if "blocks_1" in p or "final_norm" in p or "head" in p}
        assert paths_of(trainable) == top
    if part.kind == "lora":  # adapters only, at their layers' paths; lora_b starts at zero
        assert paths_of(trainable) == {
            f"params/blocks_{i}/{layer}/lora_{ab}"
            for i in (0, 1)
            for layer in ("attn_out", "mlp_down")
            for ab in "ab"
        }
        logits = model.apply(params, tokens)
        np.testing.assert_array_equal(model.apply(part.merge(trainable, frozen), tokens), logits)


@pytest.mark.parametrize(
    "gqa, targets",
    [
        (True, ["attn_q", "attn_k", "attn_v", "attn_out", "mlp_gate", "mlp_up", "mlp_down"]),
        (False, ["qkv", "attn_out", "mlp_in", "mlp_out"]),
    ],
    ids=["gqa_swiglu", "fused_gelu"],
)
def test_lora_merge_is_the_kernel_plus_scale_times_a_b(gqa, targets):
    model, params, tokens = tiny_transformer(gqa)
    part = parse_train({"lora": {"rank": 2, "alpha": 3.0, "targets": targets}})
    adapters, frozen = part.split(params, jax.random.key(0))
    rng = np.random.default_rng(0)
    adapters = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), adapters)
    merged = part.merge(adapters, frozen)
    inputs = {"qkv": 1, "attn_q": 1, "attn_k": 1, "attn_v": 1}  # head projections: D -> (H, K)
    for i in range(2):
        for name in targets:
            w = np.asarray(params["params"][f"blocks_{i}"][name]["kernel"])
            ad = adapters["params"][f"blocks_{i}"][name]
            a, b = np.asarray(ad["lora_a"]), np.asarray(ad["lora_b"])
            n_in = inputs.get(name, w.ndim - 1)  # attn_out (H, K) -> D; a Dense in -> out
            fan_in, fan_out = math.prod(w.shape[:n_in]), math.prod(w.shape[n_in:])
            assert a.shape == (fan_in, 2) and b.shape == (2, fan_out)
            want = w + 1.5 * (a @ b).reshape(w.shape)  # alpha / rank = 1.5
            got = np.asarray(merged["params"][f"blocks_{i}"][name]["kernel"])
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
            # a rank-2 update of the layer's map from its inputs to its outputs
            assert np.linalg.matrix_rank((got - w).reshape(fan_in, fan_out), tol=1e-4) == 2
    assert model.apply(merged, tokens).shape == (3, 6, 11)
    # untargeted parameters are the base's own arrays
    assert merged["params"]["embed"] is params["params"]["embed"]


def test_adapters_are_deterministic_under_the_key():
    _, params, _ = tiny_transformer(gqa=False)
    part = parse_train({"lora": {"targets": ["qkv"]}})
    (a1, _), (a2, _), (a3, _) = (part.split(params, jax.random.key(k)) for k in (0, 0, 1))
    assert same_leaves(a1, a2) and not same_leaves(a1, a3)
    a = a1["params"]["blocks_0"]["qkv"]["lora_a"]
    assert a.shape == (8, 8) and part.rank == 8 and part.scale == 2.0  # the defaults: 8, 16


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"lora": {"rank": 0}}, "lora rank must be an integer >= 1"),
        ({"lora": {"alpha": -1.0}}, "lora alpha must be a number > 0"),
        ({"lora": {"targets": []}}, "lora targets must be a non-empty list"),
        ({"lora": {"ranks": 2}}, "lora: unknown key 'ranks'"),
        ({"last_blocks": 0}, "last_blocks must be an integer >= 1"),
        ({"paths": "mlp"}, "paths must be a non-empty list"),
        ({"paths": ["a"], "last_blocks": 1}, 'must be "all" or one of'),
        ("some", 'must be "all" or one of'),
    ],
)
def test_bad_train_values_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_train(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"lora": {"targets": ["attn_q", "wq"]}}, "lora target 'wq' matches no layer"),
        ({"paths": ["mlp", "ffn"]}, "path 'ffn' matches no parameter"),
        ({"last_blocks": 3}, "last_blocks 3 exceeds the model's 2 blocks"),
    ],
)
def test_what_matches_nothing_is_named_with_what_exists(spec, message):
    _, params, _ = tiny_transformer(gqa=True)
    with pytest.raises(ValueError, match=message) as e:
        parse_train(spec).split(params, jax.random.key(0))
    assert "\n" not in str(e.value) and ("attn_out" in str(e.value) or "last_blocks" in message)


def test_a_program_taking_the_base_as_an_argument_reads_it_from_there():
    model, params, tokens = tiny_transformer(gqa=False)
    part = parse_train({"last_blocks": 1})
    trainable, frozen = part.split(params)
    base = Base(frozen)
    apply = bind(model.apply, part, base)
    np.testing.assert_array_equal(apply(trainable, tokens), model.apply(params, tokens))
    f = jax.jit(taking_base(apply, base))
    compiled = f.lower(frozen, trainable, tokens).compile()
    base_bytes = sum(a.nbytes for a in jax.tree.leaves(frozen))
    assert compiled.memory_analysis().argument_size_in_bytes > base_bytes  # an argument
    logits = model.apply(params, tokens)
    np.testing.assert_allclose(compiled(frozen, trainable, tokens), logits, atol=1e-6)
    zeros = jax.tree.map(jnp.zeros_like, frozen)  # another base in: it is read, not the closure
    assert not np.allclose(compiled(zeros, trainable, tokens), logits, atol=1e-3)
    assert base.read() is frozen  # outside a trace, the closed-over arrays


def test_last_blocks_needs_a_transformer():
    params = {"params": {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}}
    with pytest.raises(ValueError, match="last_blocks needs a transformer's blocks_0"):
        Partition("last_blocks", last_blocks=1).split(params)


def test_a_pretrained_model_is_shared_by_every_method_and_only_the_trainable_part_is_state(gguf):
    methods = {"full": {}, "top": {"train": {"last_blocks": 1}, "use": ["ewc"]}, "lora": {}}
    methods["lora"] = {"train": LORA, "use": ["ewc", "replay"]}
    p = runner.plan(config(gguf, methods))
    full, top, lora = p.methods
    # the same params object for every method: one base, read once
    embedding = full.params["params"]["embed"]["embedding"]
    assert (
        lora.base.arrays is full.params
        and top.base.arrays["params"]["embed"]["embedding"] is embedding
    )
    assert top.model == full.model and full.model.vocab_size == VOCAB
    block1 = {k for k in paths_of(full.params) if "blocks_1" in k or "final_norm" in k}
    assert paths_of(top.params) == block1
    state = jax.tree.map(lambda a: a[0], runner.initial_state(top, p.key))
    fisher = state.reg_state[0].fisher  # EWC's Fisher (one slot per task) over the trainable part
    assert paths_of(fisher) == block1 and paths_of(state.params) == block1
    assert paths_of(state.opt_state.inner_state[0].mu) == block1  # Adam's moments too
    lora_state = jax.tree.map(lambda a: a[0], runner.initial_state(lora, p.key))
    adapters = paths_of(lora.params)
    assert all(k.endswith(("lora_a", "lora_b")) for k in adapters) and len(adapters) == 12
    assert paths_of(lora_state.reg_state[0].fisher) == adapters
    assert paths_of(lora_state.opt_state.inner_state[0].nu) == adapters


@pytest.mark.slow
def test_the_compiled_programs_take_the_frozen_base_as_an_argument(gguf):
    p = runner.plan(config(gguf, {"lora": {"train": LORA}}))
    (m,) = p.methods
    program, _ = compile_program(
        m, runner.initial_state(m, p.key), p.stream, p.train, p.test, p.settings
    )
    base_bytes = sum(a.nbytes for a in jax.tree.leaves(m.base.arrays))
    # (finish reads no parameter here: the stream has no probe inputs, naive consolidates nothing)
    for f in (program.chunk, program.evaluate):
        compiled = getattr(f, "func", f)  # a callable that supplies the base, or the executable
        assert compiled.memory_analysis().argument_size_in_bytes > base_bytes


def test_a_pretrained_model_computes_in_bfloat16_on_request(gguf):
    model, params = models.pretrained("gguf", VOCAB, path=gguf, context=8)
    bf16, same = models.pretrained("gguf", VOCAB, path=gguf, context=8, dtype="bfloat16")
    assert same is params and model.dtype == jnp.float32 and bf16.dtype == jnp.bfloat16
    tokens = jnp.asarray(token_stream().tasks[0].test["x"])
    logits, low = model.apply(params, tokens), bf16.apply(params, tokens)
    assert low.dtype == jnp.float32 and np.abs(low - logits).max() < 0.1 * np.abs(logits).max()
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        models.pretrained("gguf", VOCAB, path=gguf, dtype="float16")


def test_a_sweeps_seeds_share_a_base_only_when_it_does_not_follow_the_seed(gguf):
    lora = {"lora": {"train": LORA}}
    assert not runner.base_follows_seed(config(gguf, lora))  # pretrained: one base
    toy = copy.deepcopy(runner.with_defaults(linear_toy.get_config()))
    assert not runner.base_follows_seed(toy)
    toy["methods"]["b"] = {"train": {"paths": ["bias"]}}
    assert runner.base_follows_seed(toy) and not runner.base_follows_seed(toy, ["naive"])


@pytest.mark.slow
def test_last_blocks_moves_only_the_last_block_and_what_follows(gguf):
    cfg = config(gguf, {"top": {"train": {"last_blocks": 1}, "use": ["ewc"]}})
    cfg["train"]["record_params"] = True
    p = runner.plan(cfg)
    (method,) = p.methods
    (r,) = runner.execute(p).values()
    assert np.isfinite(r.matrix).all() and r.matrix[0][0] < r.initial[0]  # it learns
    trained = recorded(method.params, r.params[-1])
    merged = method.full_params(trained)
    base = method.full_params(method.params)
    moved = {k for k in paths_of(base) if "blocks_1" in k or "final_norm" in k}
    flat_m = dict(zip(sorted(paths_of(merged)), jax.tree.leaves(merged), strict=True))
    flat_b = dict(zip(sorted(paths_of(base)), jax.tree.leaves(base), strict=True))
    for path, leaf in flat_b.items():
        if path in moved:
            assert not np.array_equal(flat_m[path], leaf), path
        else:
            np.testing.assert_array_equal(flat_m[path], leaf, err_msg=path)


@pytest.mark.slow
def test_lora_with_ewc_and_with_replay_train_adapters_and_leave_the_base(gguf):
    methods = {"ewc": {"train": LORA, "use": ["ewc"]}, "replay": {"train": LORA, "use": ["replay"]}}
    # `freeze` still works, on the trainable part: the first block's adapters after task one
    cfg = config(gguf, {**methods, "naive": {"train": LORA, "freeze": ["blocks_0"]}})
    cfg["train"]["record_params"] = True
    p = runner.plan(cfg)
    base = copy.deepcopy(jax.tree.map(np.asarray, p.methods[0].base.arrays))
    results = runner.execute(p)
    for m in p.methods:
        r = results[m.name]
        assert np.isfinite(r.matrix).all() and r.matrix[0][0] < r.initial[0], m.name
        assert same_leaves(jax.tree.map(np.asarray, m.base.arrays), base)  # the base never moved
        final = recorded(m.params, r.params[-1])
        assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(final))  # lora_b moved
    after = [recorded(p.methods[2].params, row) for row in results["naive"].params]
    for path in ("attn_q", "attn_v", "mlp_down"):
        first, second = (row["params"]["blocks_0"][path]["lora_b"] for row in after)
        np.testing.assert_array_equal(first, second)  # frozen after the first task
        first, second = (row["params"]["blocks_1"][path]["lora_b"] for row in after)
        assert not np.array_equal(first, second)
    # the regularisers make a difference, on the adapters alone
    assert results["ewc"].matrix != results["naive"].matrix
    assert results["replay"].matrix != results["naive"].matrix


def _without_timing(results: dict) -> dict:
    return {k: {**r.to_json(), "timing": None} for k, r in results.items()}


@pytest.mark.slow
def test_a_lora_method_stopped_and_resumed_gives_the_uninterrupted_numbers(gguf, tmp_path):
    cfg = config(gguf, {"lora": {"train": LORA, "use": ["ewc"]}}, steps=6)
    cfg["checkpoint"] = {"enabled": True, "every_chunks": 1, "keep": 2}
    whole = _without_timing(runner.execute(runner.plan(cfg)))
    p, chunks = runner.plan(cfg), []
    with pytest.raises(Interrupted):
        runner.execute(
            p, run_dir=tmp_path, should_stop=lambda: len(chunks) == 4, on_steps=chunks.append
        )
    resumed = _without_timing(runner.execute(runner.plan(cfg), run_dir=tmp_path, resume=True))
    assert resumed == whole


@pytest.mark.slow
def test_a_sweep_over_a_lora_methods_strength_equals_its_members_run_alone(gguf):
    cfg = config(gguf, {"lora": {"train": LORA, "use": ["ewc"]}})
    grid = {"regularisers.ewc.strength": [1.0, 1000.0]}
    (group,) = sw.plan_sweep(cfg, grid, 2, {}, ["lora"])
    results = sw.run_group(group)
    members = list(zip(group.members, results, strict=True))
    for member, r in (members[0], members[3]):  # one of each strength and each seed
        alone = copy.deepcopy(cfg)
        alone["seed"] = member.seed
        alone["regularisers"]["ewc"]["strength"] = member.values["regularisers.ewc.strength"]
        (single,) = runner.run(alone)[1].values()
        np.testing.assert_array_equal(r.matrix, single.matrix)
        np.testing.assert_array_equal(r.curves["values"], single.curves["values"])
    assert len({json.dumps(r.curves["values"]) for r in results}) == 4  # members differ


@pytest.mark.parametrize(
    "train, model, message",
    [
        ({"lora": {"targets": ["wq"]}}, {}, "methods.m.train: lora target 'wq' matches no layer"),
        ({"paths": ["nothing"]}, {}, "methods.m.train: path 'nothing' matches no parameter"),
        ({"lora": {"rank": 0}}, {}, "methods.m.train: lora rank must be an integer >= 1"),
        ({"lora": {"alpha": -2}}, {}, "methods.m.train: lora alpha must be a number > 0"),
        ({"last_blocks": 5}, {}, "last_blocks 5 exceeds the model's 2 blocks"),
        ("all", {"vocab": 300}, "the stream has 300 outputs but the model's vocabulary has 280"),
        ("all", {"context": 64}, "context 64 must be in [1, 32]"),
        ("all", {"path": "missing.gguf"}, "cannot read the model's GGUF"),
    ],
)
def test_bad_values_are_one_line_config_errors_and_nothing_is_written(
    gguf, tmp_path, capsys, train, model, message
):
    cfg = config(gguf, {"m": {"train": train}})
    if "vocab" in model:
        cfg["stream"]["vocab"] = model["vocab"]
    else:
        cfg["model"].update(model)
    with pytest.raises(ConfigError) as e:
        runner.plan(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)
    exp = tmp_path / "exp.py"
    exp.write_text(f"def get_config(arg=None):\n    return {cfg!r}\n")
    out = tmp_path / "runs"
    assert main(["run", str(exp), "--out", str(out), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() or not any(out.rglob("*.json"))


@pytest.mark.slow
def test_a_lora_run_reloads_as_the_base_with_its_adapters_folded_in(gguf, tmp_path):
    cfg = config(gguf, {"lora": {"train": LORA, "use": ["replay"]}})
    cfg["train"]["record_params"] = True
    cfg["checkpoint"]["enabled"] = True
    exp = tmp_path / "exp.py"
    exp.write_text(f"def get_config(arg=None):\n    return {cfg!r}\n")
    argv = ["run", str(exp), "--out", str(tmp_path), "--name", "r", "--quiet", "--no-plots"]
    assert main(argv) == 0
    run_dir = tmp_path / "exp" / "r"
    model, params = reload.load_model(run_dir, "lora")
    (method,) = runner.plan(cfg).methods
    r = json.loads((run_dir / "lora" / "results.json").read_text())
    want = method.full_params(recorded(method.params, r["params"][-1]))
    assert same_leaves(params, want)
    assert not same_leaves(params, method.base.arrays)  # the adapters changed the kernels
    assert model == method.model
