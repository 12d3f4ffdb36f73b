"""Which parameters a method trains: its params pytree split into a trainable and a frozen part.

Fine-tuning as the article describes it, over one model's params (nested dicts):

- "all": every parameter trains (the default: trainable = params, nothing frozen);
- "paths": the leaves whose "/"-joined key path ("params/blocks_3/mlp_up/kernel") contains one
  of the given substrings train (the article's b: `{"paths": ["bias"]}`), the rest is frozen;
- "last_blocks": k: a transformer's last k blocks (`blocks_i`, i >= num_layers - k) and what
  follows them (the final norm and an untied output head) train; the embedding (which a tied
  model also reads its logits with) and the earlier blocks are frozen;
- "lora": every layer named in `targets` (attn_q, attn_k, attn_v, the fused qkv, attn_out,
  mlp_gate, mlp_up, mlp_down, mlp_in, mlp_out, head, Dense_0, ...) gets a low-rank adapter
  {"lora_a": (in, rank), "lora_b": (rank, out)} at its module's path, and the whole base is
  frozen. The layer computes with kernel + (alpha / rank) * lora_a @ lora_b reshaped to the
  kernel's shape (Hu et al. 2021). lora_a is drawn normal with variance 1 / in (a Kaiming-like
  scale that does not depend on the width chosen) and lora_b is zero, so an adapted model starts
  exactly at its base.

A kernel's "in" is its input axes flattened, "out" the rest: the first axis of the projections
onto heads (qkv (D, 3, H, K), attn_q / attn_k / attn_v (D, H or G, K)), every axis but the last
of any other kernel (attn_out (H, K, D), a Dense (in, out), a convolution (h, w, in, out)).

`split(params, key) -> (trainable, frozen)` and `merge(trainable, frozen) -> params` (the full
params the model applies, adapters folded in) are pure; `bind` makes a model's apply function
take the trainable part only, reading the frozen one from a `Base`, so that the optimizer,
regularisers, sweeps and checkpoints see nothing else.

Closed over, a `Base` is a constant of a jitted program: with JAX 0.10's default configuration
(jax_use_simplified_jaxpr_constants off, read when jax is imported) a closed-over array is
embedded in the HLO whatever jax_embedded_constants_max_bytes says; for LoRA on SmolLM2-135M a
1 GB module, and minutes more of compilation and gigabytes more memory (measured). A program
that takes the base as an argument instead wraps its function with `taking_base`: while it is
traced, the bound apply reads that argument, which stays an argument of the compiled program
and, outside a sweep's vmap, unbatched, so the members share one base.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp

KINDS = ("all", "paths", "last_blocks", "lora")
HEAD_PROJECTIONS = ("qkv", "attn_q", "attn_k", "attn_v")  # input: the first axis only
AFTER_BLOCKS = ("final_norm", "head")  # what follows a transformer's last block
LORA_KEYS = {"rank": 8, "alpha": 16.0, "targets": ("attn_q", "attn_v")}
_BLOCK = re.compile(r"blocks_(\d+)$")


@dataclass(frozen=True)
class Partition:
    """How a method's trainable parameters relate to its model's params (see the module)."""

    kind: str = "all"
    paths: tuple[str, ...] = ()  # "paths"
    last_blocks: int = 0  # "last_blocks"
    rank: int = 0  # "lora"
    alpha: float = 0.0
    targets: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        """LoRA's alpha / rank."""
        return self.alpha / self.rank

    def split(self, params, key=None):
        """(trainable, frozen) of `params`; "lora" draws fresh adapters with `key`. A path or
        target that selects nothing, or a block count the model does not have, is a one-line
        ValueError that lists what exists."""
        if self.kind == "all":
            return params, {}
        if self.kind == "lora":
            if key is None:
                raise ValueError("lora needs a key to draw its adapters")
            return _adapters(self, params, key), params
        if self.kind == "paths":
            found = {p for p in _leaf_paths(params) if any(s in p for s in self.paths)}
            for s in self.paths:
                if not any(s in p for p in found):
                    raise ValueError(
                        f"path {s!r} matches no parameter (known names: {_names(params)})"
                    )
        else:
            found = set(_top(params, self.last_blocks))
        trainable, frozen = _divide(params, lambda path: "/".join(path) in found)
        return trainable, frozen

    def merge(self, trainable, frozen):
        """The full params for the model's apply: `trainable` over `frozen`, adapters folded."""
        if self.kind == "all":
            return trainable
        if self.kind == "lora":
            return _fold(frozen, trainable, self.scale)
        return _union(trainable, frozen)


def parse_train(spec) -> Partition:
    """A method's `train` value checked: absent / "all", {"paths": [...]}, {"last_blocks": k},
    or {"lora": {"rank": 8, "alpha": 16, "targets": [...]}} (LORA_KEYS gives the defaults)."""
    if spec is None or spec == "all":
        return Partition()
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS[1:]:
        raise ValueError(
            f'must be "all" or one of {{"paths": [...]}}, {{"last_blocks": k}}, '
            f'{{"lora": {{"rank", "alpha", "targets"}}}}, got {spec!r}'
        )
    ((kind, value),) = spec.items()
    if kind == "paths":
        return Partition("paths", paths=_strings("paths", value))
    if kind == "last_blocks":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"last_blocks must be an integer >= 1, got {value!r}")
        return Partition("last_blocks", last_blocks=value)
    if not isinstance(value, Mapping):
        raise ValueError(f"lora must be a mapping of rank, alpha, targets, got {value!r}")
    if unknown := sorted(set(value) - set(LORA_KEYS)):
        raise ValueError(f"lora: unknown key {unknown[0]!r} (known: {', '.join(LORA_KEYS)})")
    lora = {**LORA_KEYS, **value}
    rank, alpha = lora["rank"], lora["alpha"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"lora alpha must be a number > 0, got {alpha!r}")
    targets = _strings("lora targets", lora["targets"])
    return Partition("lora", rank=rank, alpha=float(alpha), targets=targets)


class Base:
    """The frozen part of a method's params, as its bound apply reads it: `arrays`, or inside
    `given(value)` (while a program taking them as an argument is traced) that value."""

    def __init__(self, arrays):
        self.arrays = arrays
        self._given: list = []

    def read(self):
        return self._given[-1] if self._given else self.arrays

    @contextlib.contextmanager
    def given(self, value):
        self._given.append(value)
        try:
            yield
        finally:
            self._given.pop()


def bind(apply: Callable, partition: Partition, base: Base) -> Callable:
    """`apply(params, x)` as a function of the trainable part: (trainable, x) -> output."""

    def apply_trainable(trainable, x, *args, **kwargs):
        return apply(partition.merge(trainable, base.read()), x, *args, **kwargs)

    return apply_trainable


def taking_base(fn: Callable, base: Base) -> Callable:
    """fn(*args) as g(frozen, *args), where a bound apply reads `frozen` (a traced argument)."""

    def with_base(frozen, *args):
        with base.given(frozen):
            return fn(*args)

    return with_base


def num_layers(params) -> int:
    """How many transformer blocks (`blocks_i`) `params` holds; 0 for another model."""
    parts = {part for path in _leaf_paths(params) for part in path.split("/")}
    return sum(1 for part in parts if _BLOCK.match(part))


def _strings(what: str, value) -> tuple[str, ...]:
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ValueError(f"{what} must be a non-empty list of non-empty strings, got {value!r}")
    return tuple(value)


def _leaf_paths(params) -> list[str]:
    return [
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]


def _names(params, limit: int = 40) -> str:
    """The distinct key names of `params`, transformer blocks as one range, for an error."""
    names, blocks = [], set()
    for path in _leaf_paths(params):
        for part in path.split("/"):
            if m := _BLOCK.match(part):
                blocks.add(int(m.group(1)))
            elif part not in names:
                names.append(part)
    if blocks:
        names.append(f"blocks_{min(blocks)}..blocks_{max(blocks)}")
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _top(params, k: int) -> list[str]:
    """The leaf paths of the last `k` blocks and of what follows them."""
    n = num_layers(params)
    if n == 0:
        raise ValueError(
            f"last_blocks needs a transformer's blocks_0, blocks_1, ... (known names: "
            f"{_names(params)})"
        )
    if k > n:
        raise ValueError(f"last_blocks {k} exceeds the model's {n} blocks")

    def top(part: str) -> bool:
        m = _BLOCK.match(part)
        return int(m.group(1)) >= n - k if m else part in AFTER_BLOCKS

    return [p for p in _leaf_paths(params) if any(top(part) for part in p.split("/"))]


def _divide(tree, keep: Callable, prefix: tuple[str, ...] = ()):
    """(the leaves for which keep(path) holds, the others), as nested dicts without empty ones."""
    if not isinstance(tree, Mapping):
        return (tree, None) if keep(prefix) else (None, tree)
    yes, no = {}, {}
    for key, value in tree.items():
        a, b = _divide(value, keep, (*prefix, str(key)))
        if a is not None:
            yes[key] = a
        if b is not None:
            no[key] = b
    if prefix:
        return yes or None, no or None
    return yes, no


def _union(a, b):
    """Nested dicts `a` and `b` (disjoint leaves) as one."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        raise ValueError("the trainable and frozen parts overlap")
    out = dict(b)
    for key, value in a.items():
        out[key] = _union(value, out[key]) if key in out else value
    return out


def _axes(name: str, kernel) -> tuple[int, int]:
    """(in, out) of a kernel flattened as a matrix (see the module's docstring)."""
    n_in = 1 if name in HEAD_PROJECTIONS else kernel.ndim - 1
    return math.prod(kernel.shape[:n_in]), math.prod(kernel.shape[n_in:])


def _targets(params, targets: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The module paths (key tuples) of the layers named in `targets` (each must name one)."""
    modules = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        if keys[-1] == "kernel" and getattr(leaf, "ndim", 0) >= 2:
            modules.append(keys[:-1])
    for t in targets:
        if not any(m[-1] == t for m in modules):
            layers = sorted({m[-1] for m in modules})
            raise ValueError(
                f"lora target {t!r} matches no layer (layers with a kernel: {', '.join(layers)})"
            )
    return [m for m in modules if m[-1] in targets]


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


def _set(tree, keys, value):
    if not keys:
        return value
    return {**tree, keys[0]: _set(tree.get(keys[0], {}), keys[1:], value)}


def _adapters(p: Partition, params, key):
    """Fresh adapters of every target layer, at its module's path (lora_b zero)."""
    out: dict = {}
    for i, path in enumerate(_targets(params, p.targets)):
        kernel = _get(params, path)["kernel"]
        fan_in, fan_out = _axes(path[-1], kernel)
        a = jax.random.normal(jax.random.fold_in(key, i), (fan_in, p.rank), kernel.dtype)
        a = a * jnp.asarray(fan_in**-0.5, kernel.dtype)
        b = jnp.zeros((p.rank, fan_out), kernel.dtype)
        out = _set(out, path, {"lora_a": a, "lora_b": b})
    return out


def _fold(frozen, adapters, scale: float):
    """`frozen` with kernel + scale * lora_a @ lora_b at every adapter's module."""

    def walk(node, adapted, keys):
        if "lora_a" in adapted:
            kernel = node["kernel"]
            delta = (adapted["lora_a"] @ adapted["lora_b"]).reshape(kernel.shape)
            return {**node, "kernel": kernel + scale * delta}
        out = dict(node)
        for k, sub in adapted.items():
            if k not in node:
                raise ValueError(f"an adapter at {'/'.join((*keys, str(k)))} has no layer")
            out[k] = walk(node[k], sub, (*keys, str(k)))
        return out

    return walk(frozen, adapters, ())
