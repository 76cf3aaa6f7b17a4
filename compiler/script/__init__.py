"""compiler.script: IR as Python-syntax text, and back.

    from compiler.script import I, R, T

    text = mod.script()                      # print (also compiler.script.print(node))
    mod2 = compiler.script.parse(text)       # structurally equal to mod

    @I.ir_module                             # or build a module from a class's source
    class Module:
        @R.function
        def main(x: R.Tensor(("n", 4), "float32")) -> R.Tensor(("n", 4), "float32"):
            with R.dataflow():
                y = R.nn.relu(x)
                R.output(y)
            return y

The parser reads the source with Python's `ast` and never executes it; errors are
`compiler.ir.ParseError`s at the line and column of the user's text.
"""
from . import ns_ir as I
from . import ns_relax as R
from . import ns_tir as T
from .parser import parse
from .printer import print_module, print_node

__all__ = ["I", "R", "T", "parse", "print", "print_module"]


def print(node) -> str:  # noqa: A001 - the script's own verb, as TVM's `script()`
    """The script text of a module, function, statement, expression or struct info."""
    return print_node(node)
