"""A small convolutional network for 1-D signals (MNIST-1D) and one-channel images (MNIST)."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from continual.models.inits import layer_inits
from continual.models.linear import dense_stack


class CNN(nn.Module):
    """Strided ReLU convolutions, then ReLU dense layers of `widths`, then `features` outputs.

    Inputs (B, L) are read as 1-D signals of one channel, (B, H, W) as one-channel images,
    (B, H, W, C) as they are. The default is Greydanus & Kobak's MNIST-1D network: three
    convolutions of 25 channels (kernels 5, 3, 3, stride 2, padding 1) and a linear read-out.
    """

    features: int
    channels: Sequence[int] = (25, 25, 25)
    kernels: Sequence[int] = (5, 3, 3)
    strides: Sequence[int] = (2, 2, 2)
    padding: int = 1
    widths: Sequence[int] = ()
    initializer: str = "lecun"  # weight initialisation (continual.models.inits)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim in (2, 3):  # (B, L) or (B, H, W): add the channel axis
            x = x[..., None]
        spatial = x.ndim - 2
        for i, (c, k, s) in enumerate(zip(self.channels, self.kernels, self.strides, strict=True)):
            size = min(x.shape[1:-1])
            if (size + 2 * self.padding - k) // s + 1 < 1:
                raise ValueError(
                    f"convolution {i} (kernel {k}, stride {s}, padding {self.padding}) does "
                    f"not fit its input of size {size}; use smaller kernels or fewer layers"
                )
            pad = [(self.padding, self.padding)] * spatial
            inits = layer_inits(self.initializer, x.shape[-1] * k**spatial)
            conv = nn.Conv(c, (k,) * spatial, (s,) * spatial, pad, name=f"conv_{i}", **inits)
            x = nn.relu(conv(x))
        return dense_stack(x.reshape(x.shape[0], -1), self.widths, self.features, self.initializer)
