"""Models by name; each is a Flax linen module whose params stay a plain pytree.

`make` builds a module to be initialised; `build` also gives the params of a pretrained one
(PRETRAINED): "smollm2" (SmolLM2-135M-Instruct, continual.data.smollm2's cached GGUF, fetched on
first use, or the llama GGUF at `path`) and "gguf" (any llama GGUF at `path`), both read into the
one Transformer (continual.models.llama_weights) with `context` positions (default: the
checkpoint's, at most 2048) and compute `dtype` "float32" (default) or "bfloat16" (params stay
float32). Their vocabulary must be the stream's outputs.
"""

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from continual.models.cnn import CNN
from continual.models.inits import INITS, check_init
from continual.models.linear import MLP, Linear
from continual.models.transformer import Transformer


def _positive_ints(name: str, value) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    ):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    return tuple(value)


def make(name: str, num_outputs: int, **kwargs):
    """Builds the model called `name` with `num_outputs` output units."""
    if name == "linear":
        return Linear(features=num_outputs, **kwargs)
    if name in INIT_MODELS and "initializer" in kwargs:
        check_init(kwargs["initializer"])
    if name == "mlp":
        widths = _positive_ints("widths", kwargs.pop("widths", (100, 100)))
        residual = kwargs.get("residual", False)
        if not isinstance(residual, bool):
            raise ValueError(f"residual must be true or false, got {residual!r}")
        if residual and len(set(widths)) > 1:
            raise ValueError(f"residual needs equal hidden widths, got {list(widths)}")
        return MLP(features=num_outputs, widths=widths, **kwargs)
    if name == "cnn":
        keys = ("channels", "kernels", "strides", "widths")
        layers = {k: _positive_ints(k, kwargs.pop(k)) for k in keys if k in kwargs}
        padding = kwargs.get("padding", 1)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
        model = CNN(features=num_outputs, **layers, **kwargs)
        if not len(model.channels) == len(model.kernels) == len(model.strides) >= 1:
            raise ValueError("channels, kernels and strides must be lists of one equal length")
        return model
    if name == "transformer":
        return Transformer(vocab_size=num_outputs, **kwargs)
    if name in PRETRAINED:
        return pretrained(name, num_outputs, **kwargs)[0]
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def build(name: str, num_outputs: int, key, example_x, /, **kwargs):
    """(model, params): a pretrained model's, or the model's init with `key` on `example_x`,
    the same params object for the same model, key and input shape (flax modules hash by their
    fields), so that the methods compared by a run all start from the same parameters."""
    if name in PRETRAINED:
        return pretrained(name, num_outputs, **kwargs)
    model = make(name, num_outputs, **kwargs)
    key_data = np.asarray(jax.random.key_data(key)).tobytes()
    return model, _init(model, key_data, tuple(example_x.shape), str(example_x.dtype))


@functools.lru_cache(maxsize=8)
def _init(model, key_data: bytes, shape: tuple, dtype: str):
    key = jax.random.wrap_key_data(jnp.asarray(np.frombuffer(key_data, np.uint32)))
    return jax.jit(model.init)(key, jnp.zeros(shape, dtype))


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def pretrained(
    name: str, num_outputs: int, path=None, context: int | None = None, dtype: str = "float32"
):
    """(Transformer, params) of the pretrained model `name` (see the module's docstring); the
    same params object for the same file, whatever the context and dtype (every method of a run,
    every member of a sweep shares it). A file that cannot be read is a one-line ValueError."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int)):
        raise ValueError(f"context must be an integer, got {context!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a file name, got {path!r}")
    try:
        if name == "smollm2":
            from continual.data.smollm2 import smollm2_path

            file = smollm2_path(path)
        elif path is None:
            raise ValueError("model gguf needs a path: a llama GGUF file")
        else:
            file = Path(path).expanduser()
        stat = file.stat()
        limit, model, params = _read(name, str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError as e:
        raise ValueError(f"cannot read the model's GGUF: {e}") from None
    if context is not None:
        if not 1 <= context <= limit:
            raise ValueError(f"context {context} must be in [1, {limit}] for this model")
        model = model.clone(context=context)
    if model.vocab_size != num_outputs:
        raise ValueError(
            f"the stream has {num_outputs} outputs but the model's vocabulary has "
            f"{model.vocab_size} tokens: they must be equal"
        )
    return model.clone(dtype=DTYPES[dtype]), params


@functools.lru_cache(maxsize=2)
def _read(name: str, file: str, mtime_ns: int, size: int):
    """(its context length, model, params) of a GGUF file, read once per version of it (its
    modification time and size): every method and member shares the params."""
    from continual.data.gguf import read_llama
    from continual.data.smollm2 import load_smollm2
    from continual.models.llama_weights import params_from_gguf

    spec, tensors, _ = load_smollm2(file) if name == "smollm2" else read_llama(file)
    return spec.context_length, *params_from_gguf(spec, tensors)


PRETRAINED = ("smollm2", "gguf")
MODELS = ("linear", "mlp", "cnn", "transformer", *PRETRAINED)
INIT_MODELS = ("mlp", "cnn")  # the models that take an `initializer` (continual.models.inits)
__all__ = [
    "CNN",
    "INITS",
    "INIT_MODELS",
    "MLP",
    "MODELS",
    "PRETRAINED",
    "Linear",
    "Transformer",
    "build",
    "make",
    "pretrained",
]
