"""Mutation testing of vitkit with mutmut 3 (`make mutation`), and its record.

    python tools/mutation.py run [--jobs N] [--survivors | --unfinished] [GLOB ...]
                                                         mutate, test, then write the record
    python tools/mutation.py record                      rewrite the record from mutants/ as it is

`run` is ``mutmut run`` (configured in pyproject.toml, ``[tool.mutmut]``) with one change: mutmut
maps every function to the tests that ran it (its "stats" pass); this tool keeps, of those, only
the tests in the files that are meant to test the function's module (MODULE_TESTS below). A mutant
in ViTConfig then runs test_config/test_model and not the training suite that also happens to
build a config, which is what makes a run fit on a small machine. GLOBs are mutmut mutant names
(``'vitkit.train.ema.*'``): only those are run, each again even when it has a result; without any,
every mutant that has no result yet. ``--survivors``: only the GLOBs' mutants that survived the last
run; ``--unfinished``: those and the ones with no result yet (to go on after a run was stopped).
Results stay in ``mutants/`` (delete it to start over; delete ``mutants/mutmut-stats.json`` after
changing MODULE_TESTS or the test selection).

The record, ``benchmarks/mutation.md`` and ``benchmarks/mutation.json``: the command, date,
machine, score per module and every surviving mutant with its verdict from
``tools/mutation_verdicts.json`` ({"mutants": {mutant name: {"diff": the mutation, "verdict": "..."}},
"hand_checks": [mutations applied by hand and the test that kills each]): a survivor without a
verdict, or whose diff no longer matches, is listed as open.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import difflib
import fnmatch
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD_MD = ROOT / "benchmarks" / "mutation.md"
RECORD_JSON = ROOT / "benchmarks" / "mutation.json"
VERDICTS = ROOT / "tools" / "mutation_verdicts.json"

# module (dotted prefix) -> the test files that test it; the longest matching prefix wins
MODEL_TESTS = ["test_model.py", "test_config.py", "test_timm_parity.py", "test_weights_timm.py"]
# the families a converter reads besides the plain ViT, each tested in its own file (no BEiT in the npz format)
FAMILY_TESTS = ["test_weights_families.py", "test_weights_beit.py", "test_weights_hybrid.py", "test_weights_towers.py"]
MODULE_TESTS: dict[str, list[str]] = {
    # the config's stem, BEiT, pooling and flexible-patch options are tested with the models that use them
    "vitkit.config": ["test_config.py", "test_model.py", "test_weights_hybrid.py", "test_weights_beit.py",
                      "test_weights_towers.py", "test_flexi.py", "test_mae.py"],
    "vitkit.models": MODEL_TESTS,
    # the model's options (stems, pooling, position embeddings, distillation token, MAE's masking) are tested where
    # the models that use them are: a mutant in models/vit.py runs those files too
    "vitkit.models.vit": MODEL_TESTS + ["test_weights_towers.py", "test_weights_hybrid.py", "test_weights_beit.py",
                                        "test_flexi.py", "test_mae.py", "test_weights_families.py",
                                        "test_train_units.py", "test_tasks.py", "test_features.py", "test_predict.py"],
    "vitkit.layers": MODEL_TESTS,
    "vitkit.layers.flexi": ["test_flexi.py", "test_model.py"],
    "vitkit.layers.attention_pool": ["test_weights_towers.py", "test_model.py"],
    "vitkit.layers.hybrid_stem": ["test_weights_hybrid.py", "test_model.py", "test_config.py"],
    "vitkit.layers.rel_pos": ["test_weights_beit.py", "test_model.py", "test_timm_parity.py"],
    # each converter's own option-by-option tests (test_convert_*.py) beside the family files that use it
    "vitkit.weights.convert_hf": ["test_convert_hf.py", "test_weights_hf.py", "test_cli_convert.py", "test_weights_reliability.py",
                                  "test_preprocess_parity.py"] + FAMILY_TESTS,
    "vitkit.weights.convert_hf_mae": ["test_convert_hf_mae.py", "test_mae.py", "test_cli_convert.py", "test_weights_reliability.py",
                                      "test_weights_hf.py"],
    "vitkit.weights.convert_npz": ["test_convert_npz.py", "test_weights_npz.py", "test_cli_convert.py", "test_weights_reliability.py",
                                   "test_weights_hybrid.py", "test_weights_families.py", "test_weights_towers.py"],
    "vitkit.weights.convert_timm": ["test_convert_timm.py", "test_weights_timm.py", "test_timm_parity.py", "test_weights_pretrained.py",
                                    "test_cli_convert.py", "test_weights_reliability.py", "test_preprocess_parity.py",
                                    "test_flexi.py"] + FAMILY_TESTS,
    "vitkit.data.preprocess": ["test_preprocess_parity.py", "test_preprocess_strips.py", "test_decode.py", "test_weights_hf.py",
                               "test_weights_timm.py", "test_weights_vitkit.py"],
    "vitkit.data.decode": ["test_decode.py", "test_data_datasets.py"],
    "vitkit.train.engine": ["test_train_engine.py", "test_engine_units.py"],
    "vitkit.train.optim": ["test_train_units.py", "test_train_engine.py"],
    "vitkit.train.ema": ["test_train_units.py", "test_train_engine.py"],
    "vitkit.train.checkpoint": ["test_train_units.py", "test_train_engine.py"],
    "vitkit.export.onnx": ["test_export.py"],
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check",
          -11: "segfault", -9: "segfault", None: "not checked",
          -6: "killed", 134: "killed",  # SIGABRT: the mutant aborts the test process (a C++ terminate), a failure
          # pytest's "interrupted": the mutant raised KeyboardInterrupt (the engine's TrainingInterrupted is one)
          # inside a test; the clean run of the same tests passes, so the tests noticed
          2: "killed"}


def module_of(key: str) -> str:
    """'vitkit.config.xǁViTConfigǁvalidate' / 'vitkit.export.onnx.x_check_onnx__mutmut_3' -> the module."""
    m = re.match(r"^(.+?)\.x[ǁ_]", key)
    return m.group(1) if m else key


def test_files_for(function_key: str) -> list[str] | None:
    module = module_of(function_key)
    best = max((p for p in MODULE_TESTS if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else MODULE_TESTS[best]


def _filter_stats() -> None:
    """Keep, for each function, only the tests of its module's test files (see MODULE_TESTS)."""
    from mutmut.state import state

    st = state()
    for key, tests in st.tests_by_mangled_function_name.items():
        files = test_files_for(key)
        if files is None:
            continue
        keep = {t for t in tests if t.split("::")[0].rsplit("/", 1)[-1] in files}
        tests.clear()
        tests.update(keep)


def _mutmut_run(globs: list[str], jobs: int) -> None:
    os.chdir(ROOT)
    os.environ.pop("PYTHONPATH", None)  # the tests must import mutants/src, never src/
    sys.argv = ["mutmut", "run"]
    import mutmut.__main__ as mm

    real = mm.collect_or_load_stats

    def collect_or_load_stats(*a, **kw):
        real(*a, **kw)
        _filter_stats()

    mm.collect_or_load_stats = collect_or_load_stats
    mm._run(tuple(globs), jobs)


# ---------------------------------------------------------------------------- the record

def _mutants_of(py: Path) -> dict[str, list[str]]:
    """{mangled mutant function name: its diff lines ('-old', '+new')} from a mutated file."""
    src = py.read_text(encoding="utf-8")
    lines = src.splitlines()
    funcs: dict[str, list[str]] = {}

    def visit(body):
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in n.name:
                text = lines[n.lineno - 1:n.end_lineno]
                funcs[n.name] = [text[0].replace(n.name, "_")] + text[1:]  # the name differs in every copy
            elif isinstance(n, ast.ClassDef):
                visit(n.body)

    visit(ast.parse(src).body)
    out = {}
    for name, body in funcs.items():
        base, _, num = name.rpartition("__mutmut_")
        if num == "orig" or base + "__mutmut_orig" not in funcs:
            continue
        out[name] = [l.rstrip() for l in difflib.unified_diff(funcs[base + "__mutmut_orig"], body, lineterm="", n=0)
                     if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    return out


def _diff_text(d: list[str]) -> str:
    return "\n".join(l[0] + " " + l[1:].strip() for l in d)


def _machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "cores": str(os.cpu_count())}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU family", "Model", "Vendor ID"):
                info[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import mutmut
        info["mutmut"] = getattr(mutmut, "__version__", "?")
    except ImportError:
        pass
    return info


def _verdicts() -> dict:
    return json.loads(VERDICTS.read_text()) if VERDICTS.exists() else {}


def _carry_source(old: dict | None, module: str, names: list[str], diffs: dict[str, str]) -> dict | None:
    """The record ``old``'s survivors of ``module`` ({mutant: entry}) when its results can stand for the mutants
    not checked now: that record checked every mutant of the module, had as many as there are now, and each of
    its survivors has the same diff now (mutmut numbers mutants per function, so unchanged code gives the same
    names and diffs). Its other mutants were killed. None when any of that fails (the code changed)."""
    row = (old or {}).get("modules", {}).get(module)
    if not row or row.get("not checked") or row.get("total") != len(names):
        return None
    prev = {x["mutant"]: x for x in old.get("survivors", []) if module_of(x["mutant"]) == module}
    if any(diffs.get(n) != x["diff"] for n, x in prev.items()):
        return None
    return prev


def collect(old: dict | None = None) -> dict:
    """Scores and survivors of the mutants/ folder. With ``old`` (the record, benchmarks/mutation.json), a mutant
    not checked in this folder takes its result from the record where :func:`_carry_source` allows it, so a
    fresh folder can rerun only the recorded survivors (``run --survivors``) and keep the module's score."""
    verdicts = _verdicts().get("mutants", {})
    modules: dict[str, Counter] = {}
    survivors = []
    for meta in sorted((ROOT / "mutants" / "src").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        if not codes:
            continue
        py = meta.with_suffix("")  # mutants/src/vitkit/x.py
        module = str(py.relative_to(ROOT / "mutants" / "src").with_suffix("")).replace("/", ".")
        diffs = _mutants_of(py)
        diff_of = {name: _diff_text(diffs.get(name.rpartition(".")[2], [])) for name in codes}
        carry = _carry_source(old, module, list(codes), diff_of)
        c = modules.setdefault(module, Counter())
        for name, code in codes.items():
            status = STATUS.get(code, "suspicious")
            if status == "not checked" and carry is not None:
                status = carry[name]["status"] if name in carry else "killed"
                c["carried"] += 1
            c[status] += 1
            diff = diff_of[name]
            v = verdicts.get(name)
            if status in ("survived", "no tests", "timeout", "suspicious", "segfault"):
                verdict = v["verdict"] if v and v.get("diff") == diff else None
                if verdict and verdict.startswith("equivalent"):
                    c["equivalent"] += 1
                survivors.append({"mutant": name, "status": status, "diff": diff, "verdict": verdict,
                                  "stale_verdict": bool(v) and v.get("diff") != diff})
    scores = {}
    for m, c in sorted(modules.items()):
        tested = c["killed"] + c["survived"] + c["no tests"] + c["timeout"] + c["suspicious"] + c["segfault"]
        killed = c["killed"] + c["timeout"]
        scores[m] = {**{k: c[k] for k in ("killed", "survived", "no tests", "timeout", "suspicious", "segfault",
                                          "not checked", "equivalent", "carried")},
                     "total": sum(v for k, v in c.items() if k not in ("equivalent", "carried")),
                     "score": round(killed / tested, 4) if tested else None,
                     "score_without_equivalent": round(killed / (tested - c["equivalent"]), 4)
                     if tested - c["equivalent"] else None}
    return {"modules": scores, "survivors": survivors}


def _old_record() -> dict:
    return json.loads(RECORD_JSON.read_text()) if RECORD_JSON.exists() else {}


def write_record(run: dict | None) -> None:
    if not (ROOT / "mutants" / "src").is_dir():  # a fresh checkout: nothing ran here, the record stays whole
        raise SystemExit("tools/mutation.py: no mutants/ folder here (no run yet): the record is left as it is")
    old = _old_record()
    data = collect(old)
    # survivors of earlier runs that are killed now: kept in the record with the test that did it
    verdicts = _verdicts().get("mutants", {})
    now_open = {x["mutant"] for x in data["survivors"]}
    killed_since = {x["mutant"]: x for x in old.get("killed_after_surviving", []) if x["mutant"] not in now_open}
    status_now = {}
    for meta in (ROOT / "mutants" / "src").rglob("*.py.meta"):
        status_now.update(json.loads(meta.read_text()).get("exit_code_by_key", {}))
    for x in old.get("survivors", []):
        if x["mutant"] not in now_open and STATUS.get(status_now.get(x["mutant"], -1)) == "killed":
            v = verdicts.get(x["mutant"], {}).get("verdict") or (
                f"killed-by-new-test (rerun {run['date'] if run else 'since'})")
            killed_since[x["mutant"]] = {"mutant": x["mutant"], "diff": x["diff"], "verdict": v}
    for name, x in killed_since.items():  # a verdict written after the fact wins
        if verdicts.get(name, {}).get("verdict"):
            x["verdict"] = verdicts[name]["verdict"]
    data["killed_after_surviving"] = sorted(killed_since.values(), key=lambda x: x["mutant"])
    # a module whose mutants are all "not checked" now (a fresh mutants/ folder, or its code changed) keeps the
    # scores and survivors of the last run that checked it, shown apart as earlier results
    earlier = dict(old.get("earlier_modules", {}))
    last_date = (old.get("runs") or [{}])[-1].get("date", "?")
    for mod, row in old.get("modules", {}).items():
        if row.get("score") is not None:
            earlier[mod] = {**row, "as_of": last_date}
    earlier = {mod: row for mod, row in earlier.items()
               if mod in data["modules"] and data["modules"][mod]["not checked"] == data["modules"][mod]["total"]}
    data["earlier_modules"] = earlier
    kept = [x for x in old.get("survivors", []) + old.get("earlier_survivors", []) if module_of(x["mutant"]) in earlier]
    data["earlier_survivors"] = list({x["mutant"]: x for x in kept}.values())
    runs = old.get("runs", [])
    if run is not None:
        runs.append(run)
    data = {"tool": "mutmut (tools/mutation.py, config in pyproject.toml [tool.mutmut])", "runs": runs,
            "machine": (run or {}).get("machine") or old.get("machine") or _machine(),
            "hand_checks": _verdicts().get("hand_checks", []), **data}
    RECORD_JSON.parent.mkdir(exist_ok=True)
    RECORD_JSON.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    RECORD_MD.write_text(_markdown(data))
    print(f"wrote {RECORD_MD.relative_to(ROOT)} and {RECORD_JSON.relative_to(ROOT)}")


def _markdown(d: dict) -> str:
    m = d["machine"]
    out = ["# Mutation testing: the record", "",
           "Written by `tools/mutation.py` (`make mutation`); mutmut's configuration is `[tool.mutmut]` in "
           "pyproject.toml, the module -> test-file map is `MODULE_TESTS` in tools/mutation.py, the verdicts "
           "are tools/mutation_verdicts.json. Scores: killed (timeouts count as killed) / mutants tested; "
           "\"no tests\" (code that no mapped test runs) counts as not killed.", "",
           "## Runs", "", "| date (UTC) | command | mutants run | wall time |", "| --- | --- | --- | --- |"]
    for r in d["runs"]:
        out.append(f"| {r['date']} | `{r['command']}` | {r.get('mutants') or 'all without a result'} | "
                   f"{r['seconds'] / 60:.1f} min |")
    out += ["", f"Machine: {m.get('Model name', '?')} (vendor {m.get('Vendor ID', '?')}, cpu family "
                f"{m.get('CPU family', '?')}, model {m.get('Model', '?')}), {m.get('cores')} cores, Python "
                f"{m.get('python')}, mutmut {m.get('mutmut', '?')}.", ""]
    if d.get("hand_checks"):
        out += ["## Hand-applied mutations (issue 15's four survivors)", "",
                "| mutation | test that now fails |", "| --- | --- |"]
        out += [f"| {h['mutation']} | {h['killed_by']} |" for h in d["hand_checks"]]
        out.append("")
    notes = _verdicts().get("notes", [])
    if notes:
        out += ["## Status", ""] + [f"- {n}" for n in notes] + [""]
    out += ["## What is and is not mutated", "",
            "- mutmut 3 mutates function and method bodies only: module-level constants (e.g. export/onnx.py's "
            "`FP32_ATOL`, `FP16_ATOL`) and decorated functions (`@property`: ViTConfig's `image_hw`, `grid_size`, "
            "`num_patches`, `mlp_dim`...; `@torch.no_grad()`: `ModelEma.update`, `VisionTransformer.get_attention_maps`) "
            "get no mutants. The ONNX thresholds and the EMA were checked by hand (above).",
            "- Lines that raise, log, print or warn (and the rest of that call) are not mutated "
            "(`do_not_mutate_patterns`): message wording, not behaviour. The condition that leads to a raise is mutated.",
            "- The tests: those of `pytest_add_cli_args_test_selection`, less four slow ones (two torch.compile tests, "
            "the 25-epoch fine-tune, the SIGKILL resume test, whose in-process twin stays); of those, a mutant runs "
            "the ones mutmut saw call its function that are in its module's files (`MODULE_TESTS`).",
            "- \"not checked\": mutants of a module that no run has reached yet (see Runs).",
            "- \"carried\": results taken from the previous record for mutants this `mutants/` folder did not run "
            "(a fresh folder that reran only the survivors): allowed only when that record checked the whole "
            "module, it has as many mutants now, and every recorded survivor has the same diff now.", ""]
    out += ["## Score per module", "",
            "| module | mutants | killed | survived | no tests | timeout | not checked | carried | equivalent | score | "
            "score without equivalent |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f} %"
    for mod, s in d["modules"].items():
        out.append(f"| {mod} | {s['total']} | {s['killed']} | {s['survived']} | {s['no tests']} | {s['timeout']} | "
                   f"{s['not checked']} | {s.get('carried', 0)} | {s['equivalent']} | {pct(s['score'])} | "
                   f"{pct(s['score_without_equivalent'])} |")
    if d.get("earlier_modules"):
        out += ["", "Earlier results of modules that no run has checked in the current `mutants/` folder (a fresh "
                "folder, or code changed since): the score when last run, and the survivors then, below. The "
                "code may have changed since; run the module again to update.", "",
                "| module | as of | mutants then | killed | survived | equivalent | score without equivalent | "
                "mutants now |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for mod, e in sorted(d["earlier_modules"].items()):
            out.append(f"| {mod} | {e.get('as_of', '?')} | {e['total']} | {e['killed']} | {e['survived']} | "
                       f"{e['equivalent']} | {pct(e['score_without_equivalent'])} | {d['modules'][mod]['total']} |")
    out += ["", "## Surviving mutants", ""]
    by_mod = defaultdict(list)
    for s in d["survivors"]:
        by_mod[module_of(s["mutant"])].append(s)
    if not d["survivors"]:
        out.append("None.")
    for mod, items in sorted(by_mod.items()):
        out += [f"### {mod}", ""]
        for s in items:
            v = s["verdict"] or ("OPEN (verdict recorded for another diff)" if s["stale_verdict"] else "OPEN")
            out.append(f"- `{s['mutant'].rpartition('.')[2]}` ({s['status']}): {v}")
            out += ["  ```diff"] + ["  " + l for l in s["diff"].splitlines()] + ["  ```"]
        out.append("")
    if d.get("earlier_survivors"):
        out += ["## Survivors of the earlier runs (modules not checked in the current folder)", ""]
        for s in sorted(d["earlier_survivors"], key=lambda x: x["mutant"]):
            out.append(f"- `{s['mutant']}` ({s['status']}): {s.get('verdict') or 'OPEN'}")
            out += ["  ```diff"] + ["  " + l for l in s["diff"].splitlines()] + ["  ```"]
        out.append("")
    if d["killed_after_surviving"]:
        out += ["## Survivors of an earlier run, killed since", ""]
        for s in d["killed_after_surviving"]:
            out.append(f"- `{s['mutant']}`: {s['verdict']}")
            out += ["  ```diff"] + ["  " + l for l in s["diff"].splitlines()] + ["  ```"]
        out.append("")
    return "\n".join(out)


def _unfinished(globs: list[str]) -> list[str]:
    """The mutants in mutants/ (of ``globs``, if given) that survived or have no result yet."""
    names = []
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        names += [k for k, code in codes.items()
                  if STATUS.get(code, "suspicious") in ("not checked", "survived", "no tests", "suspicious", "segfault")
                  and (not globs or any(fnmatch.fnmatch(k, g) for g in globs))]
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--no-record", action="store_true")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--survivors", action="store_true",
                   help="rerun only the mutants (of GLOBs, if given) that survived the last run")
    which.add_argument("--unfinished", action="store_true",
                   help="run only the mutants (of GLOBs, if given) in mutants/ that survived or have no result yet "
                        "(a GLOB alone reruns every mutant it matches, killed ones too)")
    r.add_argument("globs", nargs="*")
    sub.add_parser("record")
    sub.add_parser("_mutmut").add_argument("args", nargs="*")  # internal: the mutmut process itself
    a = ap.parse_args(argv)
    if a.cmd == "record":
        write_record(None)
        return 0
    if a.cmd == "_mutmut":
        jobs, *globs = a.args
        _mutmut_run(globs, int(jobs))
        return 0
    # run: mutmut in a child process at the lowest priority, timed
    names = a.globs
    if a.survivors:
        old = _old_record()
        # a fresh checkout has no mutants/ yet: the record's survivors (mutmut generates the mutants first)
        listed = collect(old)["survivors"] if (ROOT / "mutants" / "src").is_dir() else old.get("survivors", [])
        names = [s["mutant"] for s in listed if s["status"] != "not checked"
                 and (not a.globs or any(fnmatch.fnmatch(s["mutant"], g) for g in a.globs))]
        if not names:
            print("no surviving mutants to rerun")
            return 0
        print(f"rerunning {len(names)} surviving mutant(s)")
    elif a.unfinished:
        names = _unfinished(a.globs)
        if not names:
            print("every mutant has a result and none survived")
            return 0
        print(f"running {len(names)} surviving or unchecked mutant(s)")
    cmd = [sys.executable, str(Path(__file__).resolve()), "_mutmut", str(a.jobs), *names]
    if hasattr(os, "nice"):
        cmd = ["nice", "-n", "19", *cmd]
    start, t0 = _dt.datetime.now(_dt.timezone.utc), time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    run = {"date": start.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.time() - t0, 1),
           "command": (f"python tools/mutation.py run --{'survivors' if a.survivors else 'unfinished'}"
                       + "".join(" " + shlex.quote(g) for g in a.globs))
           if a.survivors or a.unfinished else "make mutation" + (f" MUTANTS={shlex.quote(' '.join(a.globs))}" if a.globs else "")
           + (f" MUTATION_JOBS={a.jobs}" if a.jobs != 2 else ""),
           "mutants": f"{len(names)} survivors of {' '.join(a.globs) or 'all'}" if a.survivors
           else f"{len(names)} survivors or unchecked of {' '.join(a.globs) or 'all'}" if a.unfinished
           else " ".join(a.globs) or None,
           "exit_code": rc, "machine": _machine()}
    if not a.no_record:
        write_record(run)
    return rc


if __name__ == "__main__":
    sys.exit(main())
