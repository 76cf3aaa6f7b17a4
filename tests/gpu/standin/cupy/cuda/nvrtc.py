"""`cupy.cuda.nvrtc` of the stand-in: only the version (it compiles nothing)."""


def getVersion() -> tuple:
    return (13, 0)
