"""Models by name; each is a Flax linen module whose params stay a plain pytree."""

from continual.models.linear import MLP, Linear


def make(name: str, num_outputs: int, **kwargs):
    """Builds the model called `name` with `num_outputs` output units."""
    if name == "linear":
        return Linear(features=num_outputs, **kwargs)
    if name == "mlp":
        return MLP(features=num_outputs, widths=tuple(kwargs.pop("widths", (100, 100))), **kwargs)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


MODELS = ("linear", "mlp")
__all__ = ["MLP", "MODELS", "Linear", "make"]
