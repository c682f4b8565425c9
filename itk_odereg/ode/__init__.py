"""Neural-ODE models: NODEO's velocity network and flow."""
from __future__ import annotations

from .flow import SOLVERS, NeuralODEFlow, invert_displacement
from .velocity import VelocityNetwork

__all__ = ["VelocityNetwork", "NeuralODEFlow", "invert_displacement", "SOLVERS"]
