"""continual: continual learning in JAX, from the article's linear toy to vmapped sweeps."""

from continual.evaluate import summarize
from continual.losses import Objective, categorical, gaussian
from continual.models import MLP, Linear
from continual.regularisers import Regulariser, chain, ewc, identity, l2, regulariser, replay
from continual.runner import execute, plan, run
from continual.streams import linear_toy, split, split_blobs, split_mnist1d
from continual.train import make_train_step
from continual.types import Results, Stream, Task, TaskData, TrainState

__all__ = [
    "MLP",
    "Linear",
    "Objective",
    "Regulariser",
    "Results",
    "Stream",
    "Task",
    "TaskData",
    "TrainState",
    "categorical",
    "chain",
    "ewc",
    "execute",
    "gaussian",
    "identity",
    "l2",
    "linear_toy",
    "make_train_step",
    "plan",
    "regulariser",
    "replay",
    "run",
    "split",
    "split_blobs",
    "split_mnist1d",
    "summarize",
]
