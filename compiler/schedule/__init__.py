"""compiler.schedule: loop transformations of tensor programs.

Primitives are pure functions PrimFunc -> PrimFunc (`primitives.py`) addressed by
block name and loop var; `Schedule` wraps them for interactive use.
"""
from ..ir.errors import ScheduleError
from .loops import dedup_loop_vars
from .primitives import (annotate, bind, cache_read, cache_write, decompose_reduction, fuse,
                         get_loops, parallel, reorder, serial, split, unroll, vectorize)
from .schedule import Schedule

__all__ = ["Schedule", "ScheduleError", "annotate", "bind", "cache_read", "cache_write",
           "decompose_reduction", "dedup_loop_vars", "fuse", "get_loops", "parallel", "reorder",
           "serial", "split", "unroll", "vectorize"]
