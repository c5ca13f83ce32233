import json
import os
import subprocess
import sys

import pytest

import vitkit
from vitkit.cli.main import main


def test_models_lists_every_name_with_params_and_gflops(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in vitkit.list_models():
        assert name in out
    assert "86.6M" in out and "35.13" in out  # B/16: params and GFLOPs
    assert "vit_tiny_patch4_32" in out  # how the names outside the list are written (they parse, see below)


def test_models_json_for_given_names(capsys):
    assert main(["models", "--json", "vit_tiny_patch4_32", "B/16@384"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tokens"] for r in rows] == [65, 577]


def test_unknown_name_is_a_clear_error_without_traceback(capsys):
    assert main(["models", "vit_enormous_patch16_224"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitkit: error: unknown model size 'enormous'") and "Traceback" not in err


def test_demo_runs_saves_and_classifies(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "validation top-1:" in text and "true " in text and "predicted " in text
    model = vitkit.load(out)
    assert model.labels == [str(i) for i in range(10)] and model.cfg.channels == 1


def test_demo_rejects_bad_epochs(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_python_dash_m_module_reports_user_errors_without_traceback(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "vitkit.cli.main", "convert", str(tmp_path), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "already exists" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("argv", [["models"], ["models", "--json"]])
def test_output_into_a_closed_pipe_exits_quietly(argv):
    """RELIABILITY item 40, second half: `vitkit models | head -1` with the reader already gone:
    no BrokenPipeError traceback (nor 'Exception ignored' at exit), exit status 141 (128 + SIGPIPE)."""
    r, w = os.pipe()
    os.close(r)  # the reader has gone: every write to the pipe fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "vitkit.cli.main", *argv], stdout=w, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert p.stderr == ""


def test_library_notes_follow_stderr_when_it_is_replaced(capsys):
    """The CLI's "vitkit: ..." log lines go to the stderr of the moment: a handler bound to the stream of the
    first main() would write into a closed capture later (pytest's "--- Logging error ---")."""
    import io
    import logging
    import sys

    from vitkit.cli.main import main

    main(["models", "vit_tiny_patch4_16"])
    capsys.readouterr()
    old = sys.stderr
    closed = io.StringIO()
    sys.stderr = closed
    try:
        closed.close()  # what an earlier capture's stream is once it is gone
        now = io.StringIO()
        sys.stderr = now
        logging.getLogger("vitkit").info("a note from the library")
    finally:
        sys.stderr = old
    assert now.getvalue() == "vitkit: a note from the library\n"
