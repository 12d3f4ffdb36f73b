"""Linear and MLP models (Flax linen, used functionally: params are a plain pytree)."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from continual.models.inits import layer_inits


class Linear(nn.Module):
    """y = x W + b. With one input and one output this is the article's f(x) = ax + b
    (a = kernel, b = bias)."""

    features: int

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        x_BxD = x_BxD.reshape(x_BxD.shape[0], -1)
        return nn.Dense(self.features, kernel_init=nn.initializers.zeros, name="linear")(x_BxD)


class MLP(nn.Module):
    """Fully connected ReLU network: input flattened, hidden `widths`, `features` outputs;
    `initializer` names the weight initialisation (continual.models.inits)."""

    widths: Sequence[int]
    features: int
    initializer: str = "lecun"

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        return dense_stack(
            x_BxD.reshape(x_BxD.shape[0], -1), self.widths, self.features, self.initializer
        )


def dense_stack(h_BxH, widths, features: int, initializer: str) -> jax.Array:
    """ReLU dense layers `hidden_i` of `widths`, then a linear read-out `out` of `features`;
    called inside a compact module (the MLP, the CNN's head), whose parameters they become."""
    for i, width in enumerate(widths):
        inits = layer_inits(initializer, h_BxH.shape[-1])
        h_BxH = nn.relu(nn.Dense(width, name=f"hidden_{i}", **inits)(h_BxH))
    return nn.Dense(features, name="out", **layer_inits(initializer, h_BxH.shape[-1]))(h_BxH)
