"""MIL heads: one interface (``forward(x (B, N, D), mask (B, N)) -> (B, C)``),
a registry, and the six methods of the reference benchmark.

Importing this package registers every head (each head module registers
itself through ``register_model`` when imported).
"""
from wsi_mil.models.abmil import ABMIL
from wsi_mil.models.base import MILHead
from wsi_mil.models.chowder import Chowder
from wsi_mil.models.dsmil import DSMIL
from wsi_mil.models.hipt_mil import HIPTMIL
from wsi_mil.models.meanpool import MeanPool
from wsi_mil.models.registry import MODELS, create_model, list_models, register_model
from wsi_mil.models.transmil import TransMIL
from wsi_mil.models.transmil_ref import TransMILRef

__all__ = [
    "ABMIL",
    "DSMIL",
    "HIPTMIL",
    "MODELS",
    "Chowder",
    "MILHead",
    "MeanPool",
    "TransMIL",
    "TransMILRef",
    "create_model",
    "list_models",
    "register_model",
]
