"""compiler.pipeline: every stage loads, and a stage that cannot is an error naming it
(it used to be skipped silently, so a missing pass did nothing)."""
import pytest

from compiler.ir.errors import CompilerError
from compiler.pipeline import STAGES, PipelineError, get_pipeline


@pytest.mark.parametrize("target", sorted(STAGES))
def test_every_stage_loads(target):
    assert [p.__name__ for p in get_pipeline(target)] == [n for _, n in STAGES[target]]


def test_missing_stage_module_names_the_stage_and_module(monkeypatch):
    monkeypatch.setitem(STAGES, "cpu", STAGES["cpu"] + (("compiler.transform.no_such_pass", "NoSuchPass"),))
    with pytest.raises(PipelineError, match=r"pipeline stage NoSuchPass: cannot import its module "
                                            r"compiler\.transform\.no_such_pass") as e:
        get_pipeline("cpu")
    assert isinstance(e.value, CompilerError) and isinstance(e.value, ImportError)


def test_missing_dependency_of_a_stage_names_the_stage_and_the_dependency(tmp_path, monkeypatch):
    (tmp_path / "stage_with_missing_dep.py").write_text(
        "import no_such_dependency_of_a_stage\n\ndef MyPass(mod):\n    return mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(STAGES, "cpu", (("stage_with_missing_dep", "MyPass"),))
    with pytest.raises(PipelineError, match=r"stage MyPass: .*stage_with_missing_dep.*"
                                            r"no_such_dependency_of_a_stage"):
        get_pipeline("cpu")


def test_module_without_the_pass_names_both(monkeypatch):
    monkeypatch.setitem(STAGES, "cpu", (("compiler.transform.dead_code", "NoSuchPass"),))
    with pytest.raises(PipelineError, match=r"stage NoSuchPass: module compiler\.transform\.dead_code "
                                            r"defines no 'NoSuchPass'"):
        get_pipeline("cpu")


def test_build_fails_loudly_on_a_missing_stage(monkeypatch):
    from compiler import build
    from compiler.ir.module import IRModule
    monkeypatch.setitem(STAGES, "cpu", (("compiler.transform.no_such_pass", "NoSuchPass"),))
    with pytest.raises(PipelineError, match="NoSuchPass"):
        build(IRModule({}))
