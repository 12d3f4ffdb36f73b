"""Linear and MLP models (Flax linen, used functionally: params are a plain pytree)."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class Linear(nn.Module):
    """y = x W + b. With one input and one output this is the article's f(x) = ax + b
    (a = kernel, b = bias)."""

    features: int

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        x_BxD = x_BxD.reshape(x_BxD.shape[0], -1)
        return nn.Dense(self.features, kernel_init=nn.initializers.zeros, name="linear")(x_BxD)


class MLP(nn.Module):
    """Fully connected ReLU network: input flattened, hidden `widths`, `features` outputs."""

    widths: Sequence[int]
    features: int

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        h_BxH = x_BxD.reshape(x_BxD.shape[0], -1)
        for i, width in enumerate(self.widths):
            h_BxH = nn.relu(nn.Dense(width, name=f"hidden_{i}")(h_BxH))
        return nn.Dense(self.features, name="out")(h_BxH)
