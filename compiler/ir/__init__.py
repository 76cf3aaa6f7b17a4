"""compiler.ir: the one IR (graph functions, tensor programs, symbolic shapes)."""
from . import expr, graph, struct_info, tir
from .attrs import Attrs
from .errors import CompilerError, DTypeError, ParseError, ShapeError, ShardingError, StructInfoError
from .expr import PrimExpr, IntImm, FloatImm, Var as SizeVar, const, as_expr
from .graph import (Binding, BindingBlock, Call, Constant, DataflowBlock, DataflowVar, DataTypeImm,
                    Expr, ExternFunc, Function, GlobalVar, If, MatchCast, Op, PrimValue, SeqExpr,
                    ShapeExpr, StringImm, Tuple, TupleGetItem, Var, VarBinding)
from .module import IRModule
from .struct_info import (DTensorStructInfo, FuncStructInfo, ObjectStructInfo, PrimStructInfo,
                          ShapeStructInfo, StructInfo, TensorStructInfo, TupleStructInfo, tensor_sinfo)
from .tir import PrimFunc
