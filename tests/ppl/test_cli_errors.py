"""User mistakes on the command line end with one line naming the cause (no traceback), and
``--json`` output stays parseable whatever the program file prints."""

from __future__ import annotations

import json

import pytest

import ppl
from ppl import cli

LOUD = '''
import ppl
from tests.conftest import make_bigram
print("hello from the program file")


def make_program(lm, max_tokens=2):
    print("building")
    return ppl.steer(make_bigram(0), "", max_tokens=max_tokens)
'''


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def fails(argv, capsys) -> str:
    """Runs ``ppl ARGV`` in this process; the message it exits with (never a traceback)."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code not in (0, None)
    return e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err


def test_syntax_error_in_the_program_file(tmp_path, capsys):
    path = write(tmp_path, "bad.py", "def make_program(lm)\n    return None\n")
    msg = fails(["run", path], capsys)
    assert f"{path}:1: syntax error" in msg and "def make_program(lm)" in msg


def test_make_program_raising_names_its_line(tmp_path, capsys):
    path = write(tmp_path, "raises.py", "def make_program(lm):\n    return 1 / 0\n")
    msg = fails(["run", path], capsys)
    assert "make_program raised ZeroDivisionError" in msg and f"{path}:2" in msg


def test_loading_error_names_the_file(tmp_path, capsys):
    path = write(tmp_path, "imp.py", "import not_a_module_anywhere\n")
    msg = fails(["run", path], capsys)
    assert f"loading {path} raised ModuleNotFoundError" in msg


@pytest.mark.parametrize("key, flag", [("particles", "--particles"), ("seed", "--seed"),
                                       ("max_tokens", "--max-tokens")])
def test_option_colliding_with_a_flag(tmp_path, capsys, key, flag):
    path = write(tmp_path, "loud.py", LOUD)
    msg = fails(["run", path, "--option", f"{key}=8"], capsys)
    assert f"{key} is not a backend option; use {flag}" in msg


def test_trace_into_a_missing_folder_fails_before_running(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "loud.py", LOUD)
    monkeypatch.setattr(ppl, "infer", lambda *a, **k: pytest.fail("ran before checking --trace"))
    msg = fails(["run", path, "--trace", str(tmp_path / "missing" / "t.html")], capsys)
    assert "--trace" in msg and "does not exist" in msg


@pytest.mark.parametrize("flag", ["--particles", "--max-tokens"])
def test_zero_counts_are_refused(tmp_path, capsys, flag):
    path = write(tmp_path, "loud.py", LOUD)
    with pytest.raises(SystemExit) as e:
        cli.main(["run", path, flag, "0"])
    assert e.value.code == 2
    assert f"argument {flag}: must be >= 1, got 0" in capsys.readouterr().err


def test_ctrl_c_exits_with_130(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "loud.py", LOUD)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ppl, "infer", interrupted)
    assert cli.main(["run", path, "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_json_output_is_not_broken_by_program_prints(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "loud.py", LOUD)
    monkeypatch.setenv("PPL_CACHE_DIR", "")
    assert cli.main(["run", path, "--json", "--particles", "4"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["particles"] == 4 and summary["outputs"]
    assert "hello from the program file" in out.err and "building" in out.err
