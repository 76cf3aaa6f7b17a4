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
from . import arith
from .arith import (bound, canonical_form, evaluate, free_vars, prove, prove_divisible, prove_equal,
                    simplify, substitute)
from .structural import assert_structural_equal, structural_equal, structural_hash
from .struct_info_ops import (derive_call_ret_struct_info, match_struct_info,
                              struct_info_free_vars, substitute_struct_info)
from .visitor import ExprMutator, ExprVisitor, StmtExprMutator, StmtExprVisitor, post_order_visit
from .builder import BlockBuilder, function_struct_info
