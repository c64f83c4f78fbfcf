"""MIL heads: one interface (``forward(x (B, N, D), mask (B, N)) -> (B, C)``),
a registry, and the six methods of the reference benchmark."""
from wsi_mil.models.base import MILHead
from wsi_mil.models.registry import MODELS, create_model, list_models, register_model

# Importing the head modules registers them.
from wsi_mil.models.abmil import ABMIL  # noqa: E402
from wsi_mil.models.chowder import Chowder  # noqa: E402
from wsi_mil.models.dsmil import DSMIL  # noqa: E402
from wsi_mil.models.hipt_mil import HIPTMIL  # noqa: E402
from wsi_mil.models.meanpool import MeanPool  # noqa: E402
from wsi_mil.models.transmil import TransMIL  # noqa: E402

__all__ = [
    "ABMIL",
    "DSMIL",
    "HIPTMIL",
    "MODELS",
    "Chowder",
    "MILHead",
    "MeanPool",
    "TransMIL",
    "create_model",
    "list_models",
    "register_model",
]
