"""The compiler: IR, script, operators, passes, distributed lowering, codegen."""
import disco as _disco  # noqa: F401  (first: its environment settings precede numpy's import)
from .build import build
