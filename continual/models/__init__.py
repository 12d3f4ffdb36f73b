"""Models by name; each is a Flax linen module whose params stay a plain pytree."""

from continual.models.linear import MLP, Linear


def make(name: str, num_outputs: int, **kwargs):
    """Builds the model called `name` with `num_outputs` output units."""
    if name == "linear":
        return Linear(features=num_outputs, **kwargs)
    if name == "mlp":
        widths = kwargs.pop("widths", (100, 100))
        if not isinstance(widths, (list, tuple)) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths
        ):
            raise ValueError(f"widths must be a list of positive integers, got {widths!r}")
        return MLP(features=num_outputs, widths=tuple(widths), **kwargs)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


MODELS = ("linear", "mlp")
__all__ = ["MLP", "MODELS", "Linear", "make"]
