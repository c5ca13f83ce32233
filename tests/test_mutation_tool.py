"""tools/mutation.py and its record: results of an earlier record carry over to mutants a fresh mutants/ folder did not
run, only while their function is unchanged (its fingerprint); `run --changed` (what `make mutation` runs) starts
mutmut only for the rest; `record` in a checkout without mutants/ leaves the record alone. A GLOB that matches no
mutant, or tests that fail without a mutant, stop the run before the record is touched; a stopped run is marked so."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MUTATED = """\
def x_f__mutmut_orig(a):
    return a + 1
def x_f__mutmut_1(a):
    return a - 1
def x_f__mutmut_2(a):
    return a + 2
def x_g__mutmut_orig(a):
    return a
def x_g__mutmut_1(a):
    return None
"""


@pytest.fixture()
def folder(tool, monkeypatch, tmp_path):
    """A mutants/ folder of one module, pkg.mod: x_f with two mutants not run here, x_g with one killed."""
    src = tmp_path / "mutants" / "src" / "pkg"
    src.mkdir(parents=True)
    (src / "mod.py").write_text(MUTATED)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool, "RECORD_JSON", tmp_path / "mutation.json")
    monkeypatch.setattr(tool, "RECORD_MD", tmp_path / "mutation.md")
    monkeypatch.setattr(tool, "VERDICTS", tmp_path / "verdicts.json")

    def write(f_hash="aaa", f_codes=(None, None)):
        meta = {"exit_code_by_key": {"pkg.mod.x_f__mutmut_1": f_codes[0], "pkg.mod.x_f__mutmut_2": f_codes[1],
                                     "pkg.mod.x_g__mutmut_1": 1},
                "hash_by_function_name": {"x_f": f_hash, "x_g": "bbb"}}
        (src / "mod.py.meta").write_text(json.dumps(meta))
    write()
    return write


def _old(prints=(("pkg.mod.x_f", ["aaa", 2, "2026-01-01 00:00"]),)):
    return {"fingerprints": dict(prints),
            "survivors": [{"mutant": "pkg.mod.x_f__mutmut_2", "status": "survived", "diff": "- return a + 1\n+ return a + 2"}]}


def test_results_carry_only_for_a_function_whose_fingerprint_is_the_records(tool, folder):
    got = tool.collect(_old(), "2026-02-02 00:00")
    assert got["statuses"] == {"pkg.mod.x_f__mutmut_1": "killed", "pkg.mod.x_f__mutmut_2": "survived",
                               "pkg.mod.x_g__mutmut_1": "killed"}
    row = got["modules"]["pkg.mod"]
    assert (row["total"], row["killed"], row["survived"], row["carried"], row["not checked"]) == (3, 2, 1, 2, 0)
    assert [(s["mutant"], s["diff"]) for s in got["survivors"]] == [("pkg.mod.x_f__mutmut_2", "- return a + 1\n+ return a + 2")]
    # x_f's results are the record's, of its date; x_g's are this folder's, of the date given
    assert got["fingerprints"] == {"pkg.mod.x_f": ["aaa", 2, "2026-01-01 00:00"], "pkg.mod.x_g": ["bbb", 1, "2026-02-02 00:00"]}
    assert row["results_of"] == ["2026-01-01 00:00", "2026-02-02 00:00"]
    assert tool._span(row["results_of"]) == "2026-01-01 00:00 to 2026-02-02 00:00" and tool._span([]) == "-"
    for old in (_old((("pkg.mod.x_f", ["aaa", 3, "2026-01-01 00:00"]),)),  # a mutant more then: other code
                _old((("pkg.mod.x_g", ["aaa", 2, "2026-01-01 00:00"]),)),  # another function's fingerprint
                {}, None):
        got = tool.collect(old)
        assert got["statuses"]["pkg.mod.x_f__mutmut_1"] == got["statuses"]["pkg.mod.x_f__mutmut_2"] == "not checked"
        assert got["modules"]["pkg.mod"]["carried"] == 0 and "pkg.mod.x_f" not in got["fingerprints"]
    folder(f_hash="ccc")  # x_f changed since the record
    got = tool.collect(_old())
    assert got["statuses"]["pkg.mod.x_f__mutmut_1"] == "not checked" and set(got["fingerprints"]) == {"pkg.mod.x_g"}


def test_a_result_of_this_folder_wins_over_the_record(tool, folder):
    folder(f_codes=(1, 1))  # both of x_f's mutants killed here; the record had one survivor
    got = tool.collect(_old())
    assert got["statuses"]["pkg.mod.x_f__mutmut_2"] == "killed" and got["modules"]["pkg.mod"]["carried"] == 0
    folder(f_codes=(None, 0))  # a function half run here: no fingerprint until each of its mutants has a result
    got = tool.collect({})
    assert got["statuses"]["pkg.mod.x_f__mutmut_1"] == "not checked" and "pkg.mod.x_f" not in got["fingerprints"]


def test_changed_runs_only_the_mutants_without_a_result(tool, folder, monkeypatch):
    calls = _stub_children(tool, monkeypatch)
    (tool.RECORD_JSON).write_text(json.dumps(_old((("pkg.mod.x_g", ["bbb", 1, "2026-01-01 00:00"]),))))
    assert tool.main(["run", "--changed"]) == 0
    assert calls == [
        ["_generate", "2"], ["_mutmut", "2", "pkg.mod.x_f__mutmut_1", "pkg.mod.x_f__mutmut_2"]]
    rec = json.loads(tool.RECORD_JSON.read_text())
    assert rec["runs"][-1]["command"] == "make mutation" and rec["runs"][-1]["mutants"].startswith("2 new or changed")
    # the stand-in above ran nothing: x_f has no result, so no fingerprint; x_g's stays
    assert "pkg.mod.x_f" not in rec["fingerprints"] and rec["fingerprints"]["pkg.mod.x_g"] == ["bbb", 1, "2026-01-01 00:00"]
    calls.clear()
    (tool.RECORD_JSON).write_text(json.dumps(_old()))
    folder(f_codes=(None, None))
    rec_before = json.loads(tool.RECORD_JSON.read_text())
    assert tool.main(["run", "--changed", "--no-record"]) == 0
    assert len(calls) == 1 and "_generate" in calls[0]  # x_f carries, x_g was run here: mutmut is not started
    assert json.loads(tool.RECORD_JSON.read_text()) == rec_before


def test_record_without_a_mutants_folder_leaves_the_record_alone(tool, monkeypatch, tmp_path):
    record = tmp_path / "mutation.json"
    record.write_text(json.dumps(_old()))
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool, "RECORD_JSON", record)
    with pytest.raises(SystemExit, match="no mutants/ folder"):
        tool.write_record(None)
    assert json.loads(record.read_text()) == _old()


def test_unfinished_is_what_survived_or_has_no_result_after_carrying(tool, folder):
    tool.RECORD_JSON.write_text(json.dumps(_old()))
    assert tool._unfinished([]) == ["pkg.mod.x_f__mutmut_2"]  # x_f_1 carries as killed, x_g_1 was killed here
    tool.RECORD_JSON.write_text(json.dumps({}))
    assert tool._unfinished(["*x_f__mutmut_1"]) == ["pkg.mod.x_f__mutmut_1"]
    assert tool._unfinished(["*x_g*"]) == []


def test_test_stats_are_collected_again_when_a_function_has_mutants_they_did_not_know(tool, folder):
    stats, known = tool.ROOT / "mutants" / "mutmut-stats.json", tool._stats_functions_file()
    assert tool._drop_stale_stats()  # no stats yet: mutmut collects them
    stats.write_text("{}")
    assert tool._drop_stale_stats() and not stats.exists()  # stats of unknown functions (an older folder)
    stats.write_text("{}")
    known.write_text(json.dumps(["pkg.mod.x_f", "pkg.mod.x_g", "pkg.mod.x_old"]))
    assert not tool._drop_stale_stats() and stats.exists()  # every mutated function was there: they stand
    known.write_text(json.dumps(["pkg.mod.x_g"]))  # x_f got its mutants since
    assert tool._drop_stale_stats() and not stats.exists()


def _stub_children(tool, monkeypatch, mutmut_rc=0):
    """The tool's children, stood in for: `_generate` succeeds, `_mutmut` returns mutmut_rc."""
    calls = []

    def child(args):
        calls.append(args)
        return mutmut_rc if args[0] == "_mutmut" else 0
    monkeypatch.setattr(tool, "_child", child)
    monkeypatch.setattr(tool, "_machine", lambda: {"Model name": "Test CPU", "CPU family": "6", "Model": "1"})
    return calls


def test_a_glob_that_matches_no_mutant_is_refused_before_mutmut_starts(tool, folder, monkeypatch, capsys):
    calls = _stub_children(tool, monkeypatch)
    tool.RECORD_JSON.write_text(json.dumps(_old()))
    before = tool.RECORD_JSON.read_text()
    for argv in (["run", "pkg.nothing.*"], ["run", "--changed", "pkg.mod.*", "pkg.nothing.*"],
                 ["run", "--survivors", "pkg.nothing.*"], ["run", "--unfinished", "*x_h*"]):
        calls.clear()
        assert tool.main(argv) == 2
        err = capsys.readouterr().err
        assert "matches no mutant" in err and "pkg.mod" in err  # the glob, and the modules there are
        assert "'pkg.mod.x_f__mutmut_1'" in err  # an example name that exists
        assert not any("_mutmut" in c for c in calls) and tool.RECORD_JSON.read_text() == before
    # in a checkout without mutants/, --survivors checks its globs against the functions the record holds
    import shutil

    shutil.rmtree(tool.ROOT / "mutants")
    assert tool._record_names() == ["pkg.mod.x_f__mutmut_1", "pkg.mod.x_f__mutmut_2"]
    assert tool.main(["run", "--survivors", "pkg.nothing.*"]) == 2 and "matches no mutant" in capsys.readouterr().err


def test_a_part_runs_each_matched_mutant_and_the_record_says_which_modules(tool, folder, monkeypatch):
    calls = _stub_children(tool, monkeypatch)
    tool.RECORD_JSON.write_text(json.dumps(_old()))
    assert tool.main(["run", "*x_g*"]) == 0
    assert calls == [["_generate", "2"], ["_mutmut", "2", "*x_g*"]]  # mutmut gets the glob: x_g_1 again
    run = json.loads(tool.RECORD_JSON.read_text())["runs"][-1]
    assert (run["mutants"], run["modules"], run["exit_code"]) == ("1 of *x_g*", {"pkg.mod": 1}, 0)
    md = tool.RECORD_MD.read_text()
    assert f"| {run['date']} | `make mutation MUTANTS='*x_g*'` | 1 of *x_g* | finished |" in md
    assert "| Test CPU (6/1) |" in md
    # the score table's last run of pkg.mod is this run's date
    assert any(line.startswith("| pkg.mod |") and line.endswith(f"| {run['date']} |") for line in md.splitlines())


def test_tests_that_fail_on_the_unmutated_code_leave_the_record_alone(tool, folder, monkeypatch, capsys):
    calls = _stub_children(tool, monkeypatch, mutmut_rc=tool.STATS_FAILED)
    tool.RECORD_JSON.write_text(json.dumps(_old((("pkg.mod.x_g", ["bbb", 1, "2026-01-01 00:00"]),))))
    before = tool.RECORD_JSON.read_text()
    monkeypatch.setitem(tool.MODULE_TESTS, "pkg.mod", ["test_mod.py", "test_more.py"])
    assert tool.main(["run", "--changed"]) == tool.STATS_FAILED
    assert calls[-1][:2] == ["_mutmut", "2"] and tool.RECORD_JSON.read_text() == before
    assert not tool.RECORD_MD.exists()
    # the command that shows the failing test: the test files of the modules it was to mutate
    assert "pytest -x -q tests/test_mod.py tests/test_more.py" in capsys.readouterr().err


def _run_fake_mutmut(tool, monkeypatch, **attrs):
    """tools/mutation.py's mutmut child (`_mutmut_run`) against a stand-in mutmut.__main__ with ``attrs``; the
    child's exit code. The real mutmut is not a dependency of `make test`."""
    import types

    fake = types.ModuleType("mutmut.__main__")
    fake.__dict__.update(attrs)
    pkg = types.ModuleType("mutmut")
    pkg.__path__ = []
    pkg.__main__ = fake
    monkeypatch.setitem(sys.modules, "mutmut", pkg)
    monkeypatch.setitem(sys.modules, "mutmut.__main__", fake)
    monkeypatch.setitem(sys.modules, "mutmut.stats", types.ModuleType("mutmut.stats"))
    monkeypatch.setattr(tool, "_filter_stats", lambda: None)
    monkeypatch.chdir(tool.ROOT)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the child sets mutmut's argv, chdirs and drops PYTHONPATH
    monkeypatch.delenv("PYTHONPATH", raising=False)
    with pytest.raises(SystemExit) as stop:
        tool._mutmut_run([], 2)
    return stop.value.code


def test_the_mutmut_child_explains_a_failing_stats_pass(tool, folder, monkeypatch, capsys):
    """mutmut exits 1 with "failed to collect stats" when a test fails without a mutant; the child says what it
    means and exits STATS_FAILED."""
    def stats(*a, **kw):
        print("failed to collect stats. runner returned 1")
        raise SystemExit(1)
    code = _run_fake_mutmut(tool, monkeypatch, collect_or_load_stats=stats, get_mutant_runner=lambda jobs: None,
                            _run=lambda globs, jobs: sys.modules["mutmut.__main__"].collect_or_load_stats())
    assert code == tool.STATS_FAILED
    assert "the tests fail on the code as it is" in capsys.readouterr().err


def test_a_stopped_run_is_recorded_as_stopped(tool, folder, monkeypatch, capsys):
    _stub_children(tool, monkeypatch, mutmut_rc=130)
    tool.RECORD_JSON.write_text(json.dumps(_old((("pkg.mod.x_g", ["bbb", 1, "2026-01-01 00:00"]),))))
    assert tool.main(["run", "--changed"]) == 130
    rec = json.loads(tool.RECORD_JSON.read_text())
    md = tool.RECORD_MD.read_text()
    assert rec["runs"][-1]["exit_code"] == 130 and "| stopped (exit code 130) |" in md
    # a stopped run is not the module's last run
    assert any(line.startswith("| pkg.mod |") and line.endswith("| - |") for line in md.splitlines())
    assert "--unfinished" in capsys.readouterr().err


def test_the_mutmut_child_explains_failing_clean_tests(tool, folder, monkeypatch, capfd):
    """mutmut's other check before any mutant: the mutants' own tests, run clean, must pass (the message goes to
    the real stderr, as mutmut has replaced sys.stderr by then)."""
    class Runner:
        def run_clean_tests(self, tests):
            return 1

    def run(globs, jobs):
        mm = sys.modules["mutmut.__main__"]
        mm.collect_or_load_stats()
        mm.get_mutant_runner(jobs).run_clean_tests([])
        sys.exit(1)  # mutmut's own "Failed to run clean test", never reached
    code = _run_fake_mutmut(tool, monkeypatch, collect_or_load_stats=lambda *a, **kw: None,
                            get_mutant_runner=lambda jobs: Runner(), _run=run)
    assert code == tool.STATS_FAILED
    assert "the tests fail on the code as it is" in capfd.readouterr().err


def test_ctrl_c_waits_for_mutmut_to_save_and_a_second_one_kills_it(tool, monkeypatch, capsys):
    class Proc:  # a child that gets the Ctrl-C too: the first wait is interrupted, mutmut then exits by itself
        def __init__(self, cmd, cwd=None):
            self.cmd, self.killed, self.waits = cmd, False, 0

        def wait(self):
            self.waits += 1
            if self.waits <= interrupts:
                raise KeyboardInterrupt
            return 0

        def kill(self):
            self.killed = True
    procs = []
    monkeypatch.setattr(tool.subprocess, "Popen", lambda cmd, cwd=None: procs.append(Proc(cmd, cwd)) or procs[-1])
    interrupts = 1
    assert tool._child(["_mutmut", "2"]) == 130  # stopped, though mutmut itself exited 0
    assert not procs[-1].killed and procs[-1].cmd[-2:] == ["_mutmut", "2"]
    assert "waiting for mutmut to save what it finished" in capsys.readouterr().err
    interrupts = 2
    with pytest.raises(KeyboardInterrupt):
        tool._child(["_mutmut", "2"])
    assert procs[-1].killed
