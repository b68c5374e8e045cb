"""Distribution: the MPI communicator wrapper and the strategy interface."""

from .comm import Comm, LocalComm, world
from .strategy import LocalStrategy, Strategy

__all__ = ["Comm", "LocalComm", "LocalStrategy", "Strategy", "world"]
