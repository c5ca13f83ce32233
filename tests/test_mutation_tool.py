"""tools/mutation.py's record: results of an earlier record carry over to mutants a fresh mutants/ folder did not
run, only while the module is unchanged; `record` in a checkout without mutants/ leaves the record alone."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(total=3, not_checked=0, survivors=(("m.x_f__mutmut_2", "- a\n+ b", "survived"),)):
    return {"modules": {"m": {"total": total, "not checked": not_checked}},
            "survivors": [{"mutant": n, "diff": d, "status": s} for n, d, s in survivors]}


def test_carry_only_from_a_record_that_checked_the_same_unchanged_module(tool):
    names = ["m.x_f__mutmut_1", "m.x_f__mutmut_2", "m.x_f__mutmut_3"]
    diffs = {"m.x_f__mutmut_1": "- a\n+ c", "m.x_f__mutmut_2": "- a\n+ b", "m.x_f__mutmut_3": "- a\n+ d"}
    carried = tool._carry_source(_record(), "m", names, diffs)
    assert set(carried) == {"m.x_f__mutmut_2"} and carried["m.x_f__mutmut_2"]["status"] == "survived"
    assert tool._carry_source(_record(total=4), "m", names, diffs) is None  # a mutant more: the code changed
    assert tool._carry_source(_record(not_checked=1), "m", names, diffs) is None  # that record was partial
    assert tool._carry_source(_record(), "m", names, {**diffs, "m.x_f__mutmut_2": "- a\n+ z"}) is None
    assert tool._carry_source(_record(), "other", names, diffs) is None and tool._carry_source(None, "m", names, diffs) is None


def test_record_without_a_mutants_folder_leaves_the_record_alone(tool, monkeypatch, tmp_path):
    record = tmp_path / "mutation.json"
    record.write_text(json.dumps(_record()))
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool, "RECORD_JSON", record)
    with pytest.raises(SystemExit, match="no mutants/ folder"):
        tool.write_record(None)
    assert json.loads(record.read_text()) == _record()
