#!/usr/bin/env python3
"""Regenerate gpuscale's KEDA external-scaler modules from ``externalscaler.proto``.

    .venv/bin/python scripts/gen_externalscaler.py          # rewrite the committed modules
    .venv/bin/python scripts/gen_externalscaler.py OUT_DIR  # write them to OUT_DIR instead

The proto is compiled from a copy laid out as its Python package
(``gpuscale/integrations/_externalscaler/externalscaler.proto``) so the generated gRPC module imports
its messages by their package path and nothing is patched by hand afterwards. Needs grpcio-tools
(a dev dependency); tests/integrations/test_keda_scaler.py regenerates and compares, so drift fails.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "src" / "gpuscale" / "integrations" / "externalscaler.proto"
PACKAGE = Path("gpuscale") / "integrations" / "_externalscaler"
COMMITTED = ROOT / "src" / PACKAGE
GENERATED = ("externalscaler_pb2.py", "externalscaler_pb2.pyi", "externalscaler_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compile the proto; write the three generated modules into ``out_dir``; return their paths."""
    from grpc_tools import protoc  # dev dependency: imported only when generating

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        dest = Path(tmp) / "out"
        (src / PACKAGE).mkdir(parents=True)
        dest.mkdir()
        shutil.copyfile(PROTO, src / PACKAGE / "externalscaler.proto")
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{src}",
                f"--python_out={dest}",
                f"--pyi_out={dest}",
                f"--grpc_python_out={dest}",
                str(PACKAGE / "externalscaler.proto"),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copyfile(dest / PACKAGE / name, target)
            written.append(target)
        return written


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else COMMITTED
    for path in generate(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
