"""Disco: the runtime. Imports neither `compiler` nor `launch`."""
