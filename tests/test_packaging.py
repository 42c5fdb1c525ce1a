"""What a pip user gets: the examples by name (`ppl examples`, `ppl run NAME`), `py.typed`,
and a wheel that installs and runs an example from outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from ppl import cli
from ppl.gallery import examples_dir, find_example, list_examples

ROOT = Path(__file__).resolve().parents[1]
GALLERY = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def test_ppl_examples_lists_every_gallery_program(capsys):
    assert list(list_examples()) == GALLERY
    assert cli.main(["examples"]) == 0
    out = capsys.readouterr().out
    for name in GALLERY:
        assert name in out
    assert "every word has at most five letters" in out  # short_words' docstring line
    assert "ppl run NAME" in out


def test_run_accepts_an_example_name():
    assert find_example("short_words") == examples_dir() / "short_words.py"
    assert find_example("short_words.py") == examples_dir() / "short_words.py"
    assert Path(cli._program_path("short_words")).read_bytes() == \
        (ROOT / "examples" / "short_words.py").read_bytes()
    assert find_example("no_such_example") is None and find_example("../ppl/cli") is None
    # an existing file wins over an example of the same name
    assert cli._program_path(str(ROOT / "examples" / "regex_date.py")).endswith("regex_date.py")


def test_pyproject_packages_the_examples_and_py_typed():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"ppl.examples" = "examples"' in text and '"ppl.examples"]' in text
    assert '"ppl" = ["py.typed"]' in text
    assert (ROOT / "ppl" / "py.typed").is_file() and (ROOT / "examples" / "__init__.py").is_file()


@pytest.mark.slow
def test_wheel_installs_and_runs_an_example_by_name_outside_the_repo(tmp_path):
    """Builds the wheel, installs it (no dependencies) into a fresh venv whose dependencies
    come from this interpreter's site-packages, and runs ``ppl run short_words`` in an empty
    folder."""
    # a clean environment: PYTHONPATH pointing at the checkout would make pip think the
    # distribution is installed already (the build's egg-info lies there)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(JAX_PLATFORMS="cpu", PPL_CACHE_DIR="")
    whl_dir = tmp_path / "whl"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", str(ROOT), "-w", str(whl_dir)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = whl_dir.glob("steerppl-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "ppl/py.typed" in names
        for name in GALLERY:  # the packaged copies are the gallery's sources
            assert z.read(f"ppl/examples/{name}.py") == (ROOT / "examples" / f"{name}.py").read_bytes()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                          "-q", str(wheel)], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies (jax, transformers, ...) from this interpreter, after the wheel's ppl; a
    # path listed in a .pth file does not run that folder's own .pth files (an editable
    # install of a checkout there stays out of the way)
    Path(site, "zz_steerppl_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import ppl, ppl.examples; print(ppl.__file__); "
                            "print(ppl.examples.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(line.startswith(site) for line in where.stdout.split()), where.stdout
    listed = subprocess.run([str(venv / "bin" / "ppl"), "examples"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "short_words" in listed.stdout, listed.stderr[-3000:]
    run = subprocess.run([str(venv / "bin" / "ppl"), "run", "short_words", "--particles", "4",
                          "--max-tokens", "6", "--json"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["outputs"] and all(o["ok"] for o in summary["outputs"])


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_import_ppl_is_lazy():
    """``import ppl`` loads neither JAX nor transformers (benchmarks/import_time.py measures the
    time); the public names load on first use and are the real objects."""
    out = _python(
        "import sys, ppl\n"
        "heavy = [m for m in ('jax', 'numpy', 'transformers', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from ppl import steer, models\n"
        "import ppl.program\n"
        "assert ppl.Program is ppl.program.Program and callable(steer)\n"
        "assert 'transformers' not in sys.modules\n"
        "assert set(ppl.__all__) <= set(dir(ppl))\n"
        "try:\n    ppl.no_such_name\nexcept AttributeError as e:\n    print('ok', e)\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok module 'ppl' has no attribute 'no_such_name'" in out.stdout


def test_a_foreign_ppl_package_is_named_with_the_fix():
    """Another distribution's ``ppl/__init__.py`` over ours: importing our modules says so."""
    out = _python(
        "import sys, types\n"
        f"fake = types.ModuleType('ppl'); fake.__path__ = [{str(ROOT / 'ppl')!r}]\n"
        "fake.__file__ = '/site-packages/ppl/__init__.py'\n"
        "sys.modules['ppl'] = fake\n"
        "import ppl.program\n")
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("ImportError: The package 'ppl' that Python imported "
                          "(/site-packages/ppl/__init__.py) is not steerppl's"), err
    assert "pip uninstall ppl" in err and "'steerppl'" in err


def test_ppl_run_by_name_in_process(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no examples/ folder here: the name is resolved by the gallery
    assert cli.main(["run", "short_words", "--particles", "2", "--max-tokens", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outputs"] and all(o["ok"] for o in summary["outputs"])
