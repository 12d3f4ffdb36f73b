"""Weight initialisation schemes for the dense and convolutional layers of MLP and CNN.

Reference implementations differ here, and continual learning results can follow: a penalty's
importance, or how far a layer moves, depends on where its parameters start.

- "lecun": Flax's default, weights from a truncated normal of variance 1 / fan_in, biases 0.
- "torch": PyTorch's default for nn.Linear and nn.Conv*, weights and biases uniform on
  [-1/sqrt(fan_in), 1/sqrt(fan_in)] (van de Ven et al.'s and Greydanus & Kobak's code).
- "glorot": Keras' default, weights uniform on [-b, b] with b = sqrt(6 / (fan_in + fan_out)),
  biases 0 (Zenke et al.'s code).

fan_in is a layer's inputs per output unit: the input width of a dense layer, input channels
times kernel size of a convolution.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

INITS = ("lecun", "torch", "glorot")


def check_init(init) -> str:
    if init not in INITS:
        raise ValueError(f"unknown initializer {init!r}; choose one of {', '.join(INITS)}")
    return init


def layer_inits(init: str, fan_in: int) -> dict:
    """kernel_init and bias_init keywords for one nn.Dense or nn.Conv with `fan_in` inputs."""
    check_init(init)
    if init == "lecun":
        return {}
    if init == "glorot":
        return {"kernel_init": nn.initializers.glorot_uniform(), "bias_init": nn.initializers.zeros}
    bound = 1.0 / math.sqrt(fan_in)  # "torch"

    def bias_init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    # variance_scaling(1/3, "fan_in", "uniform") draws from [-sqrt(3 / (3 fan_in)), +...]
    kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return {"kernel_init": kernel_init, "bias_init": bias_init}
