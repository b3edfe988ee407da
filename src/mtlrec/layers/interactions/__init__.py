"""Reusable feature-interaction modules (MODELS.md Part D)."""

from mtlrec.layers.interactions.attention import FieldSelfAttention
from mtlrec.layers.interactions.bi_interaction import BiInteraction
from mtlrec.layers.interactions.cin import CIN
from mtlrec.layers.interactions.cross import CrossNetwork
from mtlrec.layers.interactions.fint import FINT
from mtlrec.layers.interactions.gdcn import GatedCrossNetwork
from mtlrec.layers.interactions.masknet import FieldLayerNorm, MaskBlock, MaskNet
from mtlrec.layers.interactions.memonet import HashCodebook, cross_hash

__all__ = [
    "CIN",
    "FINT",
    "BiInteraction",
    "CrossNetwork",
    "FieldLayerNorm",
    "FieldSelfAttention",
    "GatedCrossNetwork",
    "HashCodebook",
    "MaskBlock",
    "MaskNet",
    "cross_hash",
]
