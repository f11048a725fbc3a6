"""Generate the Python bindings in ``src/mxgateway/generated`` from ``proto/``.

This is the only way generated code enters the repository. It runs ``grpc_tools.protoc``
(pinned version) with mypy-protobuf for ``.pyi`` stubs, then rewrites protoc's flat imports
(``import mxaccess_gateway_pb2``) to package imports so that the modules work from an
installed wheel. Output is deterministic: running it twice changes nothing.

Usage::

    python scripts/generate_proto.py            # regenerate in place
    python scripts/generate_proto.py --check    # fail if the committed output differs
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "mxgateway" / "generated"
PACKAGE = "mxgateway.generated"
PROTOS = ("mxaccess_gateway.proto", "mxaccess_worker.proto", "galaxy_repository.proto")

# The generator versions the committed output was made with; other versions could produce
# different code, which the drift check would then report as a false difference.
PINNED = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}

INIT = '''"""Python bindings generated from ``proto/`` by ``scripts/generate_proto.py``.

Do not edit: regenerate instead. Modules:

- ``mxaccess_gateway_pb2`` / ``_pb2_grpc``: package ``mxaccess_gateway.v1``
- ``mxaccess_worker_pb2`` / ``_pb2_grpc``: package ``mxaccess_worker.v1``
- ``galaxy_repository_pb2`` / ``_pb2_grpc``: package ``galaxy_repository.v1``
"""
'''

_MODULES = "|".join(re.escape(p.removesuffix(".proto")) for p in PROTOS)
_IMPORT_RE = re.compile(rf"^import ({_MODULES})_pb2( as \w+)?$", re.MULTILINE)


def _check_versions() -> None:
    for dist, wanted in PINNED.items():
        have = metadata.version(dist)
        if have != wanted:
            sys.exit(f"{dist} {have} is installed but {wanted} is pinned; install the [dev] extra")


def _plugin(name: str) -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / name, scripts / f"{name}.exe"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        sys.exit(f"{name} not found; install the [dev] extra")
    return found


def generate(out_dir: Path) -> None:
    """Run protoc into ``out_dir`` and post-process the output."""
    import grpc_tools

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *PROTOS,
    ]
    result = subprocess.run(cmd, cwd=PROTO_DIR, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"protoc failed:\n{result.stderr}")
    for path in sorted(out_dir.glob("*.py*")):
        text = path.read_text(encoding="utf-8")
        text = _IMPORT_RE.sub(
            lambda m: f"from {PACKAGE} import {m.group(1)}_pb2{m.group(2) or ''}", text
        )
        path.write_text(text, encoding="utf-8", newline="\n")
    (out_dir / "__init__.py").write_text(INIT, encoding="utf-8", newline="\n")


def check() -> int:
    """Regenerate into a temporary directory and report any difference."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "generated"
        generate(fresh)
        committed = {p.name for p in OUT_DIR.glob("*.py*")} if OUT_DIR.exists() else set()
        expected = {p.name for p in fresh.glob("*.py*")}
        problems = [f"missing: {n}" for n in sorted(expected - committed)]
        problems += [f"unexpected: {n}" for n in sorted(committed - expected)]
        for name in sorted(expected & committed):
            if not filecmp.cmp(fresh / name, OUT_DIR / name, shallow=False):
                problems.append(f"differs: {name}")
                diff = difflib.unified_diff(
                    (OUT_DIR / name).read_text(encoding="utf-8").splitlines(),
                    (fresh / name).read_text(encoding="utf-8").splitlines(),
                    f"committed/{name}",
                    f"generated/{name}",
                    lineterm="",
                    n=1,
                )
                problems.extend(list(diff)[:40])
    if problems:
        print("generated bindings are out of date; run ./generate-proto.sh", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        return 1
    print("generated bindings are up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify, change nothing")
    args = parser.parse_args()
    _check_versions()
    if args.check:
        return check()
    if OUT_DIR.exists():
        for stale in OUT_DIR.glob("*.py*"):
            stale.unlink()
    generate(OUT_DIR)
    print(f"generated bindings written to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
