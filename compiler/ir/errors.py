"""Error types of the compiler. Each message names the operator or pass, the
argument or variable, what was expected and what was given.

They live here, below every package of `compiler`, so that any module can raise or
catch any of them without importing the stage that usually raises it (codegen need
not import `build` for BuildError). The modules that raise them re-export them under
their old names (`compiler.build.BuildError`, `compiler.codegen.c.CodegenError`, ...).
"""


class CompilerError(Exception):
    """Base class of every error raised by `compiler`."""


class ShapeError(CompilerError, ValueError):
    """Shapes that an operator or a pass cannot accept."""


class DTypeError(CompilerError, TypeError):
    """Dtypes that an operator or a pass cannot accept."""


class StructInfoError(CompilerError, TypeError):
    """An expression's struct info is missing or of the wrong kind."""


class ParseError(CompilerError, SyntaxError):
    """Script text that does not parse; carries line and column of the user's text."""

    def __init__(self, message: str, lineno: int | None = None, col: int | None = None,
                 source_line: str | None = None):
        where = f"line {lineno}, column {col}: " if lineno is not None else ""
        text = where + message
        if source_line is not None:
            pointer = " " * (max(col or 1, 1) - 1) + "^"
            text += f"\n    {source_line}\n    {pointer}"
        super().__init__(text)
        self.lineno = lineno
        self.col = col


class ShardingError(CompilerError):
    """Sharding annotations that cannot be satisfied."""


class LegalizeError(CompilerError):
    """An operator call that cannot be turned into a tensor program."""


class ScheduleError(CompilerError):
    """A schedule primitive that cannot be applied; says which loop or block and why."""


class CodegenError(CompilerError):
    """A tensor program that the C or CUDA backend cannot translate."""


class BuildError(CompilerError):
    """A module that cannot be built for the target."""


class CallShapeError(BuildError):
    """A call of a tensor program passes tensors its buffers provably do not accept
    (compiler/codegen/verify_calls.py)."""
