"""The compiler: IR, script, operators, passes, distributed lowering, codegen."""
from .build import build
