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
        h_BxH = x_BxD.reshape(x_BxD.shape[0], -1)
        for i, width in enumerate(self.widths):
            inits = layer_inits(self.initializer, h_BxH.shape[-1])
            h_BxH = nn.relu(nn.Dense(width, name=f"hidden_{i}", **inits)(h_BxH))
        return nn.Dense(
            self.features, name="out", **layer_inits(self.initializer, h_BxH.shape[-1])
        )(h_BxH)
