"""hyenadna: long-context DNA language models built on the Hyena operator (HyenaDNA).

Public API; everything else is imported from its module (e.g. ``hyenadna.ops.fftconv``).
"""

from hyenadna.model import (
    HyenaConfig,
    HyenaDNAForCausalLM,
    HyenaDNAForSequenceClassification,
    HyenaDNAModel,
    HyenaOutput,
)
from hyenadna.tokenizer import CharTokenizer
from hyenadna.checkpoint import load_pretrained
from hyenadna.version import __version__

__all__ = [
    "CharTokenizer",
    "HyenaConfig",
    "HyenaDNAForCausalLM",
    "HyenaDNAForSequenceClassification",
    "HyenaDNAModel",
    "HyenaOutput",
    "__version__",
    "load_pretrained",
]
