"""The pure modules of the ingest and scoring paths compiled to C with
mypyc, used only while fresh.

Preparing a batch (decoding, validating, building deltas), reading the
profiles Redis returns and scoring them (segment decisions, predictions)
are pure Python, most of a worker's CPU. mypyc compiles the modules below
from their own type annotations (mypy strict already checks them) to C
extensions: preparing costs 17-21 % less CPU a record, a profile's segment
decision about half (docs/benchmarks.md, "The ingest modules compiled with
mypyc", "Scoring compiled too").

`make install` builds them into `build/mypyc/` beside the checkout, never
beside the sources: an extension next to `validate.py` would shadow it and
an edit would be silently ignored. A manifest records each source's hash;
`patronage.models` puts the compiled directory first on its `__path__` only
while every listed source still has the hash it was built from, so an
edited checkout runs its edits (logged at import: rebuild with `make install`).

Frozen dataclasses stay Python classes, `@mypyc_attr(native_class=False)`:
a compiled frozen class refuses the state pickle sets on it, and `Rules`
and `ProfileConfig` travel to the prepare process pickled. So do
all of segments' and predict's (models and parameters go to the fit
process and are written out from their `__dict__`); a function nested in
a method of such a class crashes mypyc 1.x's build, so those are module
functions.

PATRONAGE_COMPILED: `auto` (default, use them when built and fresh), `off`
(never: the sources as written), `on` (required: importing patronage.models
fails without fresh compiled modules; `make test`'s setting, so the suite
runs what ships).

    python -m patronage.compiled build   # what `make install` runs
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Compiled together (one shared library): calls between them are C calls.
MODULES = ("validate", "batch", "profile", "jsontext", "layout", "features", "segments", "predict")
MODES = ("auto", "on", "off")
ENV = "PATRONAGE_COMPILED"

ROOT = Path(__file__).resolve().parent.parent  # the checkout
SOURCE_DIR = ROOT / "patronage" / "models"
BUILD_DIR = ROOT / "build" / "mypyc"
MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def mode() -> str:
    """The setting; a value not among MODES counts as `auto` here and stops a
    worker's start-up in settings validation (streams/settings.py)."""
    value = os.environ.get(ENV, "auto").strip().lower()
    return value if value in MODES else "auto"


def source_hashes(source_dir: Path = SOURCE_DIR) -> dict[str, str]:
    return {
        name: hashlib.sha256((source_dir / f"{name}.py").read_bytes()).hexdigest()
        for name in MODULES
    }


def stale_reason(build_dir: Path = BUILD_DIR, source_dir: Path = SOURCE_DIR) -> str | None:
    """Why the compiled modules in `build_dir` must not be used, or None."""
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return f"not built ({build_dir / MANIFEST} missing)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if manifest.get("cache_tag") != sys.implementation.cache_tag:
        return f"built for {manifest.get('cache_tag')}, this is {sys.implementation.cache_tag}"
    built = manifest.get("modules", {})
    changed = sorted(n for n, h in source_hashes(source_dir).items() if built.get(n) != h)
    if changed:
        return "sources changed since the build: " + ", ".join(f"{n}.py" for n in changed)
    return None


def activate(package_path: list[str], build_dir: Path = BUILD_DIR) -> bool:
    """Called by patronage/models/__init__.py before any of its modules is
    imported: the compiled directory first on the package's path when fresh."""
    wanted = mode()
    if wanted == "off":
        return False
    reason = stale_reason(build_dir)
    if reason is not None:
        if wanted == "on":
            raise ImportError(f"{ENV}=on but the compiled modules are {reason}; run `make install`")
        if (build_dir / MANIFEST).exists():  # built once, then edited: say so
            log.warning("compiled modules not used (%s); rebuild with `make install`", reason)
        return False
    if str(build_dir) not in sys.path:
        sys.path.append(str(build_dir))  # the group's shared library, a top-level module
    package_path.insert(0, str(build_dir / "patronage" / "models"))
    return True


def in_use() -> bool:
    """Whether this process runs the compiled modules (metrics, the tests)."""
    from patronage.models import validate

    return not (validate.__file__ or "").endswith(".py")


def build(build_dir: Path = BUILD_DIR) -> None:
    """Compile MODULES with mypyc from a copy of the package (the extensions
    land beside the copy's sources, then move to `build_dir` alone)."""
    with tempfile.TemporaryDirectory(prefix="patronage-mypyc-") as tmp:
        work = Path(tmp)
        shutil.copytree(
            ROOT / "patronage", work / "patronage", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")  # mypy's settings
        hashes = source_hashes(work / "patronage" / "models")
        files = [f"patronage/models/{name}.py" for name in MODULES]
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *files], cwd=work, capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"mypyc failed ({done.returncode})")
        fresh = work / "out"
        (fresh / "patronage" / "models").mkdir(parents=True)
        for lib in work.glob("*__mypyc*.so"):
            shutil.move(str(lib), fresh / lib.name)
        for name in MODULES:
            (ext,) = (work / "patronage" / "models").glob(f"{name}.*.so")
            shutil.move(str(ext), fresh / "patronage" / "models" / ext.name)
        manifest = {"cache_tag": sys.implementation.cache_tag, "modules": hashes}
        (fresh / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(fresh), build_dir)
    print(f"compiled {', '.join(MODULES)} into {build_dir}")


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        raise SystemExit("usage: python -m patronage.compiled build")
    build()
