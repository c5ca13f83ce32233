"""Mutation testing of vitkit with mutmut 3 (`make mutation`), and its record.

    python tools/mutation.py run [--jobs N] [--changed | --survivors | --unfinished] [GLOB ...]
                                                         mutate, test, then write the record
    python tools/mutation.py record                      rewrite the record from mutants/ as it is

`run` is ``mutmut run`` (configured in pyproject.toml, ``[tool.mutmut]``) with one change: mutmut
maps every function to the tests that ran it (its "stats" pass); this tool keeps, of those, only
the tests in the files that are meant to test the function's module (MODULE_TESTS below). A mutant
in ViTConfig then runs test_config/test_model and not the training suite that also happens to
build a config, which is what makes a run fit on a small machine. GLOBs are mutmut mutant names
(``'vitkit.train.ema.*'``): only those are run, each again even when it has a result; without any,
every mutant that has no result yet (``make mutation ALL=1``: hours on 2 cores). ``--changed`` (what
``make mutation`` runs): only the mutants that have no result in mutants/ and cannot take one from the
record, i.e. those of functions new or changed since the record (a function's fingerprint is
mutmut's hash of its source); ``--survivors``: only the GLOBs' mutants that survived the last run;
``--unfinished``: those and the ones with no result yet (to go on after a run was stopped).
Results stay in ``mutants/`` (delete it to start over; delete ``mutants/mutmut-stats.json`` after
changing MODULE_TESTS or the test selection). A GLOB that matches no mutant is refused before anything
runs; tests that fail on the unmutated code stop the run (exit code 3) and leave the record as it was;
a run stopped otherwise (Ctrl-C) keeps what mutmut finished and its row in the record says "stopped".

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


STATS_FAILED = 3  # the exit code of a run whose tests fail on the unmutated code
TESTS_FAIL = ("tools/mutation.py: the tests fail on the code as it is, with no mutant applied (mutmut runs them "
              "first, to map each function to its tests and to check they pass), so no mutant can be judged. "
              "Nothing was run and the record is left as it is.")


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


def _stats_functions_file() -> Path:
    """The functions that had mutants when mutmut last collected its test stats (written by this tool)."""
    return ROOT / "mutants" / "stats-functions.json"


def _drop_stale_stats() -> bool:
    """Delete mutmut's saved test stats (which tests call which function) when a function has mutants that it did
    not have when they were collected: mutmut extends them for new tests only, so such a function would have no
    tests and its mutants would all read "no tests". True when mutmut will collect them afresh."""
    stats, known = ROOT / "mutants" / "mutmut-stats.json", _stats_functions_file()
    if not stats.exists():
        return True
    funcs = {_function_of(n) for n in _mutant_names()}
    if known.exists() and funcs <= set(json.loads(known.read_text())):
        return False
    print("    functions were mutated since the test stats were collected: collecting them again")
    stats.unlink()
    return True


def _plain_status(mm) -> None:
    """When the output is not a terminal (a log, a pipe), mutmut's spinner and progress counter, which redraw one
    line with a carriage return ten times a second, print a plain line at most every 30 s instead."""
    if sys.__stdout__.isatty():
        return
    import mutmut.stats as ms

    last = [0.0, None]

    def status(text: str, *, force_output: bool = False) -> None:
        if text != last[1] and (force_output or time.time() - last[0] >= 30):
            last[:] = [time.time(), text]
            print(f"    {text}", file=sys.__stdout__, flush=True)
    mm.print_status = ms.print_status = status


def _mutmut_run(globs: list[str], jobs: int) -> None:
    os.chdir(ROOT)
    os.environ.pop("PYTHONPATH", None)  # the tests must import mutants/src, never src/
    sys.argv = ["mutmut", "run"]
    import mutmut.__main__ as mm

    _plain_status(mm)

    real = mm.collect_or_load_stats

    def collect_or_load_stats(*a, **kw):
        fresh = _drop_stale_stats()
        try:
            real(*a, **kw)
        except SystemExit:  # mutmut's "failed to collect stats": a test fails with no mutant applied
            print(TESTS_FAIL, file=sys.stderr)
            raise SystemExit(STATS_FAILED) from None
        if fresh:
            _stats_functions_file().write_text(json.dumps(sorted({_function_of(n) for n in _mutant_names()}), ensure_ascii=False))
        _filter_stats()

    real_runner = mm.get_mutant_runner

    def get_mutant_runner(*a, **kw):  # mutmut's "Failed to run clean test": the same, for the mutants' own tests
        runner = real_runner(*a, **kw)
        clean = runner.run_clean_tests

        def run_clean_tests(*a2, **kw2):
            code = clean(*a2, **kw2)
            if code != 0:
                print(f"\n{TESTS_FAIL}", file=sys.__stderr__)  # sys.stderr is mutmut's output catcher here
                raise SystemExit(STATS_FAILED)
            return code
        runner.run_clean_tests = run_clean_tests
        return runner

    mm.collect_or_load_stats = collect_or_load_stats
    mm.get_mutant_runner = get_mutant_runner
    mm._run(tuple(globs), jobs)


def _mutmut_generate(jobs: int) -> None:
    """Only the first step of ``mutmut run``: write mutants/ (the mutated copy of src/ and each file's .meta with
    its functions' hashes), keeping the results of the functions that did not change."""
    os.chdir(ROOT)
    os.environ.pop("PYTHONPATH", None)
    sys.argv = ["mutmut", "run"]
    import mutmut.__main__ as mm

    _plain_status(mm)
    mm.set_mutant_under_test("mutant_generation")
    os.makedirs(ROOT / "mutants", exist_ok=True)
    t0 = time.time()
    with mm.CatchOutput(spinner_title="Generating mutants"):  # mutmut prints every file's path
        mm.copy_src_dir()
        mm.copy_also_copy_files()
        mm.setup_source_paths()
        mm.store_lines_covered_by_tests()
        stats = mm.create_mutants(jobs)
    print(f"    mutants generated in {time.time() - t0:.0f} s ({stats.mutated} files mutated, {stats.unmodified} unmodified)")


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


def _folder_codes() -> dict[str, int | None]:
    """{mutant: mutmut's exit code for it in mutants/, None while it has no result}."""
    return {n: c for meta in sorted((ROOT / "mutants" / "src").rglob("*.py.meta"))
            for n, c in json.loads(meta.read_text()).get("exit_code_by_key", {}).items()}


def _mutant_names() -> list[str]:
    """Every mutant of the mutants/ folder, by mutmut's name."""
    return list(_folder_codes())


def _matching(names, globs: list[str]) -> list[str]:
    """The ``names`` that match one of ``globs``; all of them without globs."""
    return [n for n in names if not globs or any(fnmatch.fnmatch(n, g) for g in globs)]


def _record_names() -> list[str]:
    """The mutants the record holds results for (without a mutants/ folder): mutmut numbers a function's from 1."""
    return [f"{f}__mutmut_{i}" for f, (_, count, *_) in _old_record().get("fingerprints", {}).items()
            for i in range(1, count + 1)]


def _globs_match(globs: list[str], names: list[str]) -> bool:
    """False, saying so, when a GLOB matches none of ``names``."""
    bad = [g for g in globs if not _matching(names, [g])]
    if bad:
        mods = sorted({module_of(n) for n in names})
        example = next((n for n in names if n.startswith(f"{mods[-1]}.")), "") if mods else ""
        print(f"tools/mutation.py: {', '.join(map(repr, bad))} matches no mutant. A mutant's name is its module, "
              f"then its function and number, as in '{mods[-1] if mods else 'vitkit.train.ema'}.*' or "
              f"'{example}'; the mutated modules are {', '.join(mods)}.", file=sys.stderr)
    return not bad


def _function_of(mutant: str) -> str:
    """'vitkit.train.ema.xǁModelEmaǁ__init____mutmut_1' -> 'vitkit.train.ema.xǁModelEmaǁ__init__'."""
    return mutant.rpartition("__mutmut_")[0]


def collect(old: dict | None = None, date: str | None = None) -> dict:
    """Scores, survivors, per-mutant statuses and function fingerprints of the mutants/ folder.

    A function's fingerprint is mutmut's hash of its source and its number of mutants, with the date of the
    record that first held results for that code (``date`` for code new since ``old``). With ``old`` (the record,
    benchmarks/mutation.json), a mutant not checked in this folder takes its result from the record when the
    record holds the same fingerprint for its function (the same code, so the same mutants, names and diffs):
    the record's status for it if it is listed there among the survivors, else killed. So a fresh folder runs
    only the functions changed since the record (``run --changed``) and keeps every other result."""
    verdicts = _verdicts().get("mutants", {})
    old_prints = (old or {}).get("fingerprints", {})
    old_status = {x["mutant"]: x["status"] for x in (old or {}).get("survivors", [])}
    modules: dict[str, Counter] = {}
    survivors, statuses, fingerprints, dates_of = [], {}, {}, defaultdict(set)
    for meta in sorted((ROOT / "mutants" / "src").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        if not codes:
            continue
        hashes = data.get("hash_by_function_name", {})
        py = meta.with_suffix("")  # mutants/src/vitkit/x.py
        module = str(py.relative_to(ROOT / "mutants" / "src").with_suffix("")).replace("/", ".")
        diffs = _mutants_of(py)
        c = modules.setdefault(module, Counter())
        by_function = defaultdict(list)
        for name in codes:
            by_function[_function_of(name)].append(name)
        for func, names in by_function.items():
            h = hashes.get(func.rpartition(".")[2])
            carry = h is not None and old_prints.get(func, [])[:2] == [h, len(names)]
            for name in names:
                status = STATUS.get(codes[name], "suspicious")
                if status == "not checked" and carry:
                    status = old_status.get(name, "killed")
                    c["carried"] += 1
                statuses[name] = status
                c[status] += 1
                diff = _diff_text(diffs.get(name.rpartition(".")[2], []))
                v = verdicts.get(name)
                if status in ("survived", "no tests", "timeout", "suspicious", "segfault"):
                    verdict = v["verdict"] if v and v.get("diff") == diff else None
                    if verdict and verdict.startswith("equivalent"):
                        c["equivalent"] += 1
                    survivors.append({"mutant": name, "status": status, "diff": diff, "verdict": verdict,
                                      "stale_verdict": bool(v) and v.get("diff") != diff})
            if h is not None and all(statuses[n] != "not checked" for n in names):
                fingerprints[func] = [h, len(names), old_prints[func][2] if carry and len(old_prints[func]) > 2 else date]
                dates_of[module].add(fingerprints[func][2])
    scores = {}
    for m, c in sorted(modules.items()):
        tested = c["killed"] + c["survived"] + c["no tests"] + c["timeout"] + c["suspicious"] + c["segfault"]
        killed = c["killed"] + c["timeout"]
        scores[m] = {**{k: c[k] for k in ("killed", "survived", "no tests", "timeout", "suspicious", "segfault",
                                          "not checked", "equivalent", "carried")},
                     "total": sum(v for k, v in c.items() if k not in ("equivalent", "carried")),
                     "results_of": sorted(d for d in dates_of[m] if d),
                     "score": round(killed / tested, 4) if tested else None,
                     "score_without_equivalent": round(killed / (tested - c["equivalent"]), 4)
                     if tested - c["equivalent"] else None}
    return {"modules": scores, "survivors": survivors, "statuses": statuses, "fingerprints": fingerprints}


def _old_record() -> dict:
    return json.loads(RECORD_JSON.read_text()) if RECORD_JSON.exists() else {}


def write_record(run: dict | None) -> None:
    if not (ROOT / "mutants" / "src").is_dir():  # a fresh checkout: nothing ran here, the record stays whole
        raise SystemExit("tools/mutation.py: no mutants/ folder here (no run yet): the record is left as it is")
    old = _old_record()
    data = collect(old, run["date"] if run else _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"))
    # survivors of earlier runs that are killed now: kept in the record with the test that did it
    verdicts = _verdicts().get("mutants", {})
    now_open = {x["mutant"] for x in data["survivors"]}
    killed_since = {x["mutant"]: x for x in old.get("killed_after_surviving", []) if x["mutant"] not in now_open}
    status_now = data.pop("statuses")
    for x in old.get("survivors", []):
        if x["mutant"] not in now_open and status_now.get(x["mutant"]) == "killed":
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


def _span(dates: list[str]) -> str:
    """'-', '2026-12-01 10:00' or '2026-12-01 10:00 to 2026-12-03 17:00' (sorted dates)."""
    return " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else "-"


def _markdown(d: dict) -> str:
    out = ["# Mutation testing: the record", "",
           "Written by `tools/mutation.py` (`make mutation`); mutmut's configuration is `[tool.mutmut]` in "
           "pyproject.toml, the module -> test-file map is `MODULE_TESTS` in tools/mutation.py, the verdicts "
           "are tools/mutation_verdicts.json. Score: killed (timeouts count as killed) / mutants tested; "
           "\"no tests\" (code that no mapped test runs) counts as not killed. Score without equivalent: the same "
           "with the survivors whose verdict says they are equivalent (no output can change) taken out of the "
           "mutants tested.", "",
           "## Runs", "",
           "Mutants run: those the run was given (a stopped run finished fewer). Wall time: mutmut and the "
           "record, at nice 19 (not the install of the venv). Machine: `lscpu`'s model name, cpu family and "
           "model; each had 2 cores.", "",
           "| date (UTC) | command | mutants run | result | wall time | machine |", "| --- | --- | --- | --- | --- | --- |"]
    for r in d["runs"]:
        m = r.get("machine") or {}
        result = "finished" if not r.get("exit_code") else f"stopped (exit code {r['exit_code']})"
        out.append(f"| {r['date']} | `{r['command']}` | {r.get('mutants') or 'all without a result'} | {result} | "
                   f"{r['seconds'] / 60:.1f} min | {m.get('Model name', '?')} ({m.get('CPU family', '?')}/"
                   f"{m.get('Model', '?')}) |")
    out.append("")
    if d.get("hand_checks"):
        out += ["## Hand-applied mutations (issue 15's four survivors; the ONNX threshold in fp32 and in fp16)", "",
                "| mutation | test that now fails |", "| --- | --- |"]
        out += [f"| {h['mutation']} | {h['killed_by']} |" for h in d["hand_checks"]]
        out.append("")
    notes = _verdicts().get("notes", [])
    if notes:
        out += ["## Status", "", "The newest first, then each part of the work in the order it was done.", ""]
        out += [f"- {n}" for n in notes] + [""]
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
            "- \"carried\": results taken from the previous record for mutants this `mutants/` folder did not run: "
            "a function's results carry while its fingerprint (mutmut's hash of its source, and its number of "
            "mutants) is the one in the record, so a fresh clone's `make mutation` runs only the functions changed "
            "since (`make mutation ALL=1` runs every mutant). A carried result assumes the tests still kill what "
            "they killed then: after weakening or removing a test, rerun its module (`make mutation MUTANTS=...`).", ""]
    out += ["## Score per module", "",
            "| module | mutants | killed | survived | no tests | timeout | not checked | carried | equivalent | score | "
            "score without equivalent | results first recorded (UTC) | last run (UTC) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f} %"
    last_run = {}
    for r in d["runs"]:
        for mod in (r.get("modules", {}) if not r.get("exit_code") else {}):  # finished runs
            last_run[mod] = max(last_run.get(mod, ""), r["date"])
    for mod, s in d["modules"].items():
        out.append(f"| {mod} | {s['total']} | {s['killed']} | {s['survived']} | {s['no tests']} | {s['timeout']} | "
                   f"{s['not checked']} | {s.get('carried', 0)} | {s['equivalent']} | {pct(s['score'])} | "
                   f"{pct(s['score_without_equivalent'])} | {_span(s.get('results_of', []))} | "
                   f"{last_run.get(mod, '-')} |")
    out += ["", "Results first recorded: the dates of the runs whose results the module's functions hold now (a "
            "function rerun on unchanged code keeps its first date; the older dates are each module's last run "
            "before functions were fingerprinted). Last run: the latest finished run that ran any of its mutants."]
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
        per = Counter(module_of(s["mutant"]) for s in d["killed_after_surviving"])
        out += ["## Survivors of an earlier run, killed since", "",
                f"{len(d['killed_after_surviving'])} mutants survived a run and were killed by a test written after "
                "it; each, with its diff and what killed it, is under `killed_after_surviving` in "
                "benchmarks/mutation.json.", "", "| module | killed since |", "| --- | ---: |"]
        out += [f"| {mod} | {n} |" for mod, n in sorted(per.items())] + [""]
    return "\n".join(out)


def _unfinished(globs: list[str]) -> list[str]:
    """The mutants (of ``globs``, if given) that survived or have no result, here or carried from the record."""
    statuses = collect(_old_record())["statuses"]
    return _matching([n for n, st in statuses.items()
                      if st in ("not checked", "survived", "no tests", "suspicious", "segfault")], globs)


def _command(a: argparse.Namespace) -> str:
    """The command of a run, as its row in the record shows it."""
    globs = "".join(" " + shlex.quote(g) for g in a.globs)
    jobs = f" MUTATION_JOBS={a.jobs}" if a.jobs != 2 else ""
    mode = "survivors" if a.survivors else "unfinished" if a.unfinished else "changed" if a.changed else None
    if mode == "changed" and not a.globs:
        return "make mutation" + jobs
    if mode:
        return f"python tools/mutation.py run --{mode}{globs}"
    return "make mutation" + (f" MUTANTS={shlex.quote(' '.join(a.globs))}" if a.globs else " ALL=1") + jobs


def _mutants_run(a: argparse.Namespace, names: list[str]) -> str:
    of = " ".join(a.globs) or "all"
    if a.survivors:
        return f"{len(names)} survivors of {of}"
    if a.unfinished:
        return f"{len(names)} survivors or unchecked of {of}"
    if a.changed:
        return f"{len(names) or 'none'} new or changed{' of ' + of if a.globs else ''}; the rest carried"
    if a.globs:
        return f"{len(names)} of {of}"
    return f"{len(names)} without a result"


def _child(args: list[str]) -> int:
    """This tool's ``args`` subcommand in a child process at the lowest priority; its exit code. On Ctrl-C (which
    the child gets too: mutmut then stops its workers and saves what it finished) wait for it, and report 130; a
    second Ctrl-C kills it."""
    nice = ["nice", "-n", "19"] if hasattr(os, "nice") else []
    p = subprocess.Popen([*nice, sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT)
    try:
        return p.wait()
    except KeyboardInterrupt:
        print("\ntools/mutation.py: waiting for mutmut to save what it finished (Ctrl-C again to kill it)",
              file=sys.stderr)
        try:
            rc = p.wait()
        except KeyboardInterrupt:
            p.kill()
            p.wait()
            raise
        return rc or 130


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="The whole story: the docstring of tools/mutation.py, and README.md.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{run,record}")
    r = sub.add_parser("run", help="mutate, test, then write the record",
                       description="Run mutmut, then write benchmarks/mutation.md and .json. Without a mode: the "
                                   "GLOBs' mutants, each again even when it has a result; without GLOBs, every mutant "
                                   "that has no result in mutants/ (make mutation ALL=1: hours on 2 cores).")
    r.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    r.add_argument("--no-record", action="store_true", help="leave benchmarks/mutation.md and .json as they are")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--changed", action="store_true",
                       help="only the mutants (of GLOBs, if given) with no result in mutants/ and none to carry from "
                            "the record: those of functions new or changed since it (what `make mutation` runs)")
    which.add_argument("--survivors", action="store_true",
                       help="only the mutants (of GLOBs, if given) that are survivors now, those with an "
                            "'equivalent:' verdict included")
    which.add_argument("--unfinished", action="store_true",
                       help="only the mutants (of GLOBs, if given) that survived or have no result, in mutants/ or "
                            "carried from the record (to go on after a stopped run)")
    r.add_argument("globs", nargs="*", metavar="GLOB", help="mutmut mutant names, e.g. 'vitkit.train.ema.*'")
    sub.add_parser("record", help="rewrite the record from mutants/ as it is")
    sub.add_parser("_mutmut").add_argument("args", nargs="*")  # internal: the mutmut process itself
    sub.add_parser("_generate").add_argument("jobs", type=int)  # internal: mutmut's mutant generation alone
    a = ap.parse_args(argv)
    if a.cmd == "record":
        write_record(None)
        return 0
    if a.cmd == "_generate":
        _mutmut_generate(a.jobs)
        return 0
    if a.cmd == "_mutmut":
        jobs, *globs = a.args
        _mutmut_run(globs, int(jobs))
        return 0
    # run: mutmut in a child process at the lowest priority, timed
    start, t0 = _dt.datetime.now(_dt.timezone.utc), time.time()
    args = names = []  # what mutmut is given, and the mutants that makes it run
    if a.survivors or a.unfinished:
        if not _globs_match(a.globs, _mutant_names() if (ROOT / "mutants" / "src").is_dir() else _record_names()):
            return 2
    if a.survivors:
        old = _old_record()
        # a fresh checkout has no mutants/ yet: the record's survivors (mutmut generates the mutants first)
        listed = collect(old)["survivors"] if (ROOT / "mutants" / "src").is_dir() else old.get("survivors", [])
        args = names = _matching([s["mutant"] for s in listed if s["status"] != "not checked"], a.globs)
        if not names:
            print("no surviving mutants to rerun")
            return 0
        print(f"rerunning {len(names)} surviving mutant(s)")
    elif a.unfinished:
        args = names = _unfinished(a.globs)
        if not names:
            print("every mutant has a result and none survived")
            return 0
        print(f"running {len(names)} surviving or unchecked mutant(s)")
    else:  # mutmut's generation step first: the GLOBs are checked against its mutants before anything runs
        rc = _child(["_generate", str(a.jobs)])
        if rc:
            return rc
        every = _mutant_names()
        if not _globs_match(a.globs, every):
            return 2
        if a.changed:
            statuses = collect(_old_record())["statuses"]
            args = names = _matching([n for n, st in statuses.items() if st == "not checked"], a.globs)
            print(f"{len(statuses) - len(names)} of {len(statuses)} mutants have a result (in mutants/ or carried "
                  f"from the record); running the {len(names)} new or changed")
        elif a.globs:  # each matched mutant again, whatever its result
            args, names = a.globs, _matching(every, a.globs)
        else:  # every mutant without a result in mutants/
            names = [n for n, code in _folder_codes().items() if code is None]
            print(f"running the {len(names)} of {len(every)} mutants that have no result in mutants/")
    rc = 0
    if names:
        rc = _child(["_mutmut", str(a.jobs), *args])
    if rc == STATS_FAILED:
        files = sorted({f for m in {module_of(n) for n in names} for f in (test_files_for(m) or [])})
        where = " ".join(f"tests/{f}" for f in files) if files else "tests/"
        print(f"tools/mutation.py: to see which test fails and why: .venv/bin/python -m pytest -x -q {where}",
              file=sys.stderr)
        return rc
    run = {"date": start.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.time() - t0, 1),
           "command": _command(a), "mutants": _mutants_run(a, names),
           "modules": dict(sorted(Counter(module_of(n) for n in names).items())),
           "exit_code": rc, "machine": _machine()}
    if not a.no_record:
        write_record(run)
    if rc:
        print(f"tools/mutation.py: mutmut stopped with exit code {rc}; the record holds the results it finished "
              f"(its run is marked stopped). `.venv/bin/python tools/mutation.py run --unfinished` goes on.",
              file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
