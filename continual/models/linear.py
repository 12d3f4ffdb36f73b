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
    `initializer` names the weight initialisation (continual.models.inits). `residual`: every
    hidden layer after the first adds its input, h + relu(W h + b) (MNIST-1D's MLP)."""

    widths: Sequence[int]
    features: int
    initializer: str = "lecun"
    residual: bool = False

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        x_BxD = x_BxD.reshape(x_BxD.shape[0], -1)
        return dense_stack(x_BxD, self.widths, self.features, self.initializer, self.residual)


def dense_stack(
    h_BxH, widths, features: int, initializer: str, residual: bool = False
) -> jax.Array:
    """ReLU dense layers `hidden_i` of `widths` (after the first, each adding its input if
    `residual`), then a linear read-out `out` of `features`; called inside a compact module (the
    MLP, the CNN's head), whose parameters they become."""
    for i, width in enumerate(widths):
        inits = layer_inits(initializer, h_BxH.shape[-1])
        layer = nn.relu(nn.Dense(width, name=f"hidden_{i}", **inits)(h_BxH))
        h_BxH = h_BxH + layer if residual and i > 0 else layer
    return nn.Dense(features, name="out", **layer_inits(initializer, h_BxH.shape[-1]))(h_BxH)
