"""Reference implementations for metric tests, loaded by file path (never imported as packages, never vendored).

`scripts/fetch_reference_packages.sh` (run by `make install`) downloads and unpacks them once into
`.cache/reference/` (or `$MGEN_REFERENCE_DIR`); `reference_file` runs it when they are missing, so a test never
skips for lack of them. `load_by_path` imports one file under a private module name, with stub modules standing
in for the heavy or unimportable dependencies the file names at import time (timm, torchaudio, hypy_utils...).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
FETCH_SCRIPT = REPO / "scripts" / "fetch_reference_packages.sh"


def reference_dir() -> Path:
    return Path(os.environ.get("MGEN_REFERENCE_DIR", REPO / ".cache" / "reference"))


def reference_file(package: str, relative: str) -> Path:
    """The path of `relative` inside the unpacked reference `package` (fetched first when missing)."""
    path = reference_dir() / package / relative
    if not path.is_file():
        env = {**os.environ, "PYTHON": sys.executable, "MGEN_REFERENCE_DIR": str(reference_dir())}
        subprocess.run(["bash", str(FETCH_SCRIPT)], check=True, env=env, cwd=REPO, timeout=600)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the reference package {package} (see {FETCH_SCRIPT})")
    return path


@contextmanager
def stub_modules(stubs: dict[str, ModuleType]) -> Iterator[None]:
    """Put `stubs` into sys.modules for the duration (what was there before comes back afterwards)."""
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def load_by_path(name: str, path: Path, stubs: dict[str, ModuleType] | None = None) -> ModuleType:
    """Import the file at `path` as module `name` (registered in sys.modules, so relative imports of siblings
    loaded the same way resolve), with `stubs` in place while it executes."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    with stub_modules(stubs or {}):
        spec.loader.exec_module(module)
    return module
