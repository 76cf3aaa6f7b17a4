"""`cupy.cuda.driver` of the stand-in: the error type."""
from .._runtime import CUDADriverError  # noqa: F401
