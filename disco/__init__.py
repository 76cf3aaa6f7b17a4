"""Disco: the runtime. Imports neither `compiler` nor `launch`."""
from .executable import Executable, load_executable
from .vm import VirtualMachine
