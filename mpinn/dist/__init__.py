"""Distribution: the MPI communicator wrapper and the strategy interface."""

from .arrays import ArrayComm
from .comm import Comm, LocalComm, world
from .strategy import LocalStrategy, Strategy

__all__ = ["ArrayComm", "Comm", "LocalComm", "LocalStrategy", "Strategy", "world"]
