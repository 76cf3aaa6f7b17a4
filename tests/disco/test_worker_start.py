"""Issue 15, cases 6 and 7: a ProcessSession made in a thread that ends keeps its
workers; a worker that dies at start-up is reported with the tail of its stderr; and
workers import the controller's `disco`, wherever the program was started from."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import disco
from disco.errors import WorkerError
from disco.session import process

pytestmark = pytest.mark.timeout(120)


def test_session_made_in_a_thread_that_ends_keeps_its_workers():
    made = []
    t = threading.Thread(target=lambda: made.append(disco.ProcessSession(2)))
    t.start()
    t.join(60)
    assert not t.is_alive() and made
    sess = made[0]
    try:
        time.sleep(0.5)   # a parent-death signal tied to that thread would have killed them by now
        sess.import_module("worker_funcs")
        assert sess.get_global_func("test.add")(2, 3).fetch(1) == 5
        assert all(p.poll() is None for p in sess._procs)
    finally:
        sess.shutdown()


def test_worker_dying_at_start_up_says_why(monkeypatch):
    monkeypatch.setattr(process, "_WORKER_MAIN",
                        "import sys; raise ImportError('cannot import name _native (simulated)')")
    with pytest.raises(WorkerError) as info:
        disco.ProcessSession(2)
    msg = str(info.value)
    assert "died: exited with status 1" in msg
    assert "--- its last output on stderr ---" in msg
    assert "ImportError: cannot import name _native (simulated)" in msg


def test_workers_import_the_controllers_disco(tmp_path):
    """A `disco` package in the working directory (a source tree without the compiled
    module) must not shadow the controller's in the workers."""
    shadow = tmp_path / "shadow" / "disco"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the source tree disco, without _native')\n")
    script = tmp_path / "app" / "run.py"
    script.parent.mkdir()
    script.write_text(textwrap.dedent("""
        import disco
        with disco.ProcessSession(2) as sess:
            sess.sync()
            print("workers ok")
    """))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path / "shadow", env=env,
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "workers ok" in out.stdout
