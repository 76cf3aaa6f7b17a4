"""compiler.op: operators, each defined in one place (see registry.py).

Builder API: `op.add(x, y)`, `op.matmul(x, w)`, `op.nn.softmax(x, axis=-1)`, ...; every
constructor is also reachable by its script name through `get_op("R.add")`, and
`script_namespace()` maps every `R.xxx` name (operators and value constructors
such as `R.const`) to what the script's call should invoke.
"""
# The operators import only compiler.ir (and disco's placement types): their sharding
# rules live here (sharding.py), so compiler.distributed, whose passes import the
# operators, is never a dependency of theirs.
from .registry import OpDef, OpPattern, find_op, get_op, list_ops, make_call, infer_call, register_op
from . import infer, builtin, binary, create, linear_algebra, manipulate, nn, reduce, unary
from . import memory  # R.memory.*: explicit storage, written by PlanMemory
from . import dist  # R.dist.*: sharding annotations and conversions
from . import ccl  # R.ccl.*: collectives of the local view, written by LowerToLocalView
from . import kv  # R.kv.*: the paged KV cache of language models
from . import weights  # R.dequantize: weights stored in 16 bits or GGUF blocks
from .weights import dequantize
from .unary import exp, log, sqrt, rsqrt, tanh, sigmoid, erf, sin, cos, negative, abs, square
from .binary import (add, subtract, multiply, divide, floor_divide, power, maximum, minimum,
                     equal, not_equal, less, less_equal, greater, greater_equal)
from .manipulate import (reshape, permute_dims, expand_dims, squeeze, concat, split,
                         strided_slice, take, broadcast_to, where, astype)
from .linear_algebra import matmul
from .reduce import sum, mean, max, min, prod, argmax, argmin
from .create import full, full_like, zeros, zeros_like, ones, ones_like, arange
from .builtin import (call_tir, call_dps_packed, call_pure_packed, call_packed, alloc_tensor,
                      const, shape, prim_value, string_imm, dtype)

# Convenience aliases for the builder API (the operators are R.nn.relu etc., as TVM).
relu, gelu, silu = nn.relu, nn.gelu, nn.silu

VALUE_CONSTRUCTORS = {"R.const": const, "R.shape": shape, "R.prim_value": prim_value,
                      "R.str": string_imm, "R.dtype": dtype}


def script_namespace() -> dict:
    """Every script name `R.xxx` / `R.nn.xxx` -> the callable that builds it."""
    names = {get_op(n).script: get_op(n) for n in list_ops()}
    names.update(VALUE_CONSTRUCTORS)
    return names
