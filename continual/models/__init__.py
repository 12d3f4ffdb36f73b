"""Models by name; each is a Flax linen module whose params stay a plain pytree."""

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
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


MODELS = ("linear", "mlp", "cnn", "transformer")
INIT_MODELS = ("mlp", "cnn")  # the models that take an `initializer` (continual.models.inits)
__all__ = ["CNN", "INITS", "INIT_MODELS", "MLP", "MODELS", "Linear", "Transformer", "make"]
