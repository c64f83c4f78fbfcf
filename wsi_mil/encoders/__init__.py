"""Frozen tile encoders: registry, one module per family.

>>> enc = create_encoder("histo_stats")
>>> feats = enc(enc.preprocess(tiles_uint8))   # (B, enc.embed_dim)

See ``registry.py`` for the factory signature and ``weights.py`` for how
weights are found (hub id, local file or folder, offline cache).
"""
from wsi_mil.encoders.base import Encoder, Preprocessing
from wsi_mil.encoders.registry import create_encoder, list_encoders

__all__ = ["Encoder", "Preprocessing", "create_encoder", "list_encoders"]
