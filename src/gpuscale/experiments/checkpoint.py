"""Finished simulations kept on disk, so an interrupted compare or tune resumes where it stopped.

Every job that finishes is written at once, one file per job, into a folder inside the run's output
folder (``OUT/.runs``), through a temporary file and a rename: a run stopped at any instant (Ctrl-C,
a lost Ray head, a killed machine) leaves only whole files. ``--resume`` reads them back and runs
only the jobs that have none.

A job's file is named by a digest of what decides its result: the scenario and the policy as the job
carries them (their names and their specs, so an edited policy file is a new job), the seed, and the
code version (a digest of gpuscale's own source files, so a changed simulator never reuses an old
result). Oracles are kept the same way, keyed by scenario and seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

STORE_DIR = ".runs"
"""The folder inside ``--out`` that holds finished jobs."""


@functools.cache
def code_version() -> str:
    """A digest of gpuscale's version and its Python sources and data files (16 hex digits)."""
    import gpuscale

    root = Path(gpuscale.__file__).parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".csv")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _spec_text(spec: Any) -> str:
    """A job's scenario or policy spec as text; a file named by path adds its content."""
    if isinstance(spec, str):
        path = Path(spec)
        try:
            if path.is_file():
                return spec + "\n" + path.read_text(encoding="utf-8")
        except OSError:
            pass
        return spec
    return json.dumps(spec, sort_keys=True, default=str)


def job_digest(kind: str, *parts: Any) -> str:
    """The file name of one job: ``kind`` (``run``, ``oracle``) and its parts, with the code version."""
    h = hashlib.sha256()
    h.update(code_version().encode())
    h.update(kind.encode())
    for part in parts:
        h.update(b"\0")
        h.update(_spec_text(part).encode())
    return f"{kind}-{h.hexdigest()[:32]}.pkl"


class RunStore:
    """Finished jobs in ``folder``: ``get`` one back (None if it has not finished), ``put`` one."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.reused = 0
        """Jobs read back instead of run, in this process."""

    def clear(self) -> None:
        """Forget every finished job (a run without ``--resume`` starts afresh)."""
        if self.folder.is_dir():
            for path in self.folder.glob("*.pkl"):
                path.unlink(missing_ok=True)

    def get(self, name: str) -> Any:
        path = self.folder / name
        try:
            with path.open("rb") as fh:
                value = pickle.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            return None  # unreadable: run the job again
        self.reused += 1
        return value

    def put(self, name: str, value: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
