"""MS-ODENet: the learned multi-scale ODE registration model (model, training data, training, shipped weights)."""
from .model import PARAMETERIZATIONS, SOLVERS, CascadeODENet, MSODENet, rigid_displacement
from .train import TrainSettings, load_model, save_model, train

__all__ = ["MSODENet", "CascadeODENet", "rigid_displacement", "PARAMETERIZATIONS", "SOLVERS", "TrainSettings",
           "train", "save_model", "load_model"]
