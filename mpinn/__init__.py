"""mpinn: data-parallel neural-network training over MPI, with a Keras-style API."""

__version__ = "0.1.0"

from . import activations, callbacks, data, initializers, losses, metrics, optim, regularizers
from .backend import Backend, BackendUnavailable, get_backend
from .building import load_model
from .callbacks import Callback, EarlyStopping, History, MetricsLog, ModelCheckpoint
from .dist.comm import world
from .dist.strategy import get as strategy
from .errors import ConfigError, DataError, MpinnError, PluginError
from .layers import Activation, Dense, Dropout, Layer, Rescale
from .model import Sequential
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop, schedules

__all__ = [
    "SGD",
    "Activation",
    "Adagrad",
    "Adam",
    "AdamW",
    "Backend",
    "BackendUnavailable",
    "Callback",
    "ConfigError",
    "DataError",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "History",
    "Layer",
    "MetricsLog",
    "ModelCheckpoint",
    "MpinnError",
    "PluginError",
    "RMSprop",
    "Rescale",
    "Sequential",
    "__version__",
    "activations",
    "callbacks",
    "data",
    "get_backend",
    "initializers",
    "load_model",
    "losses",
    "metrics",
    "optim",
    "regularizers",
    "schedules",
    "strategy",
    "world",
]
