"""Anti-forgetting methods as pluggable pure-function units (see base.py for the protocol)."""

from continual.regularisers.base import Regulariser, chain, identity, quadratic, regulariser
from continual.regularisers.ewc import EWCState, ewc, fisher_diagonal
from continual.regularisers.l2 import L2State, l2
from continual.regularisers.mas import MASState, mas, output_sensitivity
from continual.regularisers.replay import ReplayState, replay
from continual.regularisers.si import SIState, si

__all__ = [
    "EWCState",
    "L2State",
    "MASState",
    "Regulariser",
    "ReplayState",
    "SIState",
    "chain",
    "ewc",
    "fisher_diagonal",
    "identity",
    "l2",
    "mas",
    "output_sensitivity",
    "quadratic",
    "regulariser",
    "replay",
    "si",
]
