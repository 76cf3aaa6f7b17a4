"""Suite-wide settings.

DISCO_TP_CHECK_ROUNDTRIP=1 makes every `compiler.build` check that its input module
and the output of every pass print as script and parse back structurally equal, so
the script round trip is exercised on every module any test builds (in this process
and in worker processes that inherit the environment)."""
import os

os.environ.setdefault("DISCO_TP_CHECK_ROUNDTRIP", "1")
