"""Anti-forgetting methods as pluggable pure-function units (see base.py for the protocol)."""

from continual.regularisers.agem import AGEMState, agem
from continual.regularisers.base import Regulariser, chain, identity, quadratic, regulariser
from continual.regularisers.der import DERState, der
from continual.regularisers.ewc import EWCState, ewc, fisher_diagonal
from continual.regularisers.gem import GEMState, gem
from continual.regularisers.l2 import L2State, l2
from continual.regularisers.lwf import LwFState, lwf
from continual.regularisers.mas import MASState, mas, output_sensitivity
from continual.regularisers.replay import Buffer, ReplayState, episodic_memory, replay
from continual.regularisers.si import SIState, si

__all__ = [
    "AGEMState",
    "Buffer",
    "DERState",
    "EWCState",
    "GEMState",
    "L2State",
    "LwFState",
    "MASState",
    "Regulariser",
    "ReplayState",
    "SIState",
    "agem",
    "chain",
    "der",
    "episodic_memory",
    "ewc",
    "fisher_diagonal",
    "gem",
    "identity",
    "l2",
    "lwf",
    "mas",
    "output_sensitivity",
    "quadratic",
    "regulariser",
    "replay",
    "si",
]
