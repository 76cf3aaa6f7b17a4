"""compiler.op: operators, each defined in one place (see registry.py)."""
from .registry import OpDef, OpPattern, get_op, list_ops, make_call, infer_call, register_op
