"""Regenerates the Python gRPC code in callroute/v1/ from proto/callroute/v1/*.proto.

    python -m controlplane.codegen           # regenerate in place
    python -m controlplane.codegen --check   # exit 1 listing generated files that are stale

Protos are compiled with `-I proto`, so the generated modules import each other as
`callroute.v1.x_pb2` (the repository root is the import root). Output depends only on the .proto
files and the pinned grpcio-tools version: files are compiled in sorted order, one protoc run.

This module must not edit anything in callroute/v1/ other than generated files (*_pb2.py,
*_pb2_grpc.py, *_pb2.pyi): callroute/v1/__init__.py is hand-written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PACKAGE_DIR = Path("callroute") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


class CodegenError(RuntimeError):
    """protoc failed; the message carries its output."""


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files of the package, relative to `proto_root`, sorted for stable output."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / PACKAGE_DIR).glob("*.proto"))


def _is_generated(name: str) -> bool:
    return name.endswith(GENERATED_SUFFIXES)


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every proto into `out_root` (as `out_root/callroute/v1/...`); return the files made."""
    from grpc_tools import protoc  # imported here: only code generation needs grpcio-tools

    files = proto_files(proto_root)
    if not files:
        raise CodegenError(f"no .proto files under {proto_root / PACKAGE_DIR}")
    well_known = resources.files("grpc_tools") / "_proto"
    out_root.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}",
            *(str(f) for f in files)]
    # protoc writes diagnostics to the process's stderr file descriptor, not sys.stderr; the return
    # code is what tells failure, and the .proto path in its message is enough to find the error.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        rc = protoc.main(args)
    if rc != 0:
        raise CodegenError(f"protoc exited {rc} for {[str(f) for f in files]}: {captured.getvalue()}")
    made = sorted(p.relative_to(out_root) for p in (out_root / PACKAGE_DIR).iterdir()
                  if p.is_file() and _is_generated(p.name))
    return made


# grpcio-tools stamps its own version into every *_pb2_grpc.py; a fresh install takes the newest
# patch release (1.85.1 -> 1.85.4 broke a clean clone's check), and nothing else in the file changes
_GRPC_STAMP = re.compile(rb"^GRPC_GENERATED_VERSION = '[^']*'$", re.M)


def _unstamped(code: bytes) -> bytes:
    return _GRPC_STAMP.sub(b"GRPC_GENERATED_VERSION = ''", code)


def stale_files(repo: Path = REPO, proto_root: Path = PROTO_ROOT) -> list[str]:
    """Generated files in `repo` that differ from a fresh generation: changed, missing or orphaned."""
    with tempfile.TemporaryDirectory(prefix="callroute-codegen-") as tmp:
        fresh_root = Path(tmp)
        fresh = {str(p): (fresh_root / p).read_bytes() for p in generate(fresh_root, proto_root)}
    pkg = repo / PACKAGE_DIR
    present = {str(p.relative_to(repo)) for p in pkg.iterdir() if p.is_file() and _is_generated(p.name)} \
        if pkg.is_dir() else set()
    problems: list[str] = []
    for rel in sorted(fresh.keys() | present):
        if rel not in present:
            problems.append(f"{rel}: missing")
        elif rel not in fresh:
            problems.append(f"{rel}: no .proto generates it (orphaned)")
        elif _unstamped((repo / rel).read_bytes()) != _unstamped(fresh[rel]):
            problems.append(f"{rel}: differs from generated")
    return problems


def regenerate(repo: Path = REPO, proto_root: Path = PROTO_ROOT) -> list[str]:
    """Write fresh generated files into `repo`, removing orphaned ones; return what changed."""
    changed = stale_files(repo, proto_root)
    if not changed:
        return []
    pkg = repo / PACKAGE_DIR
    pkg.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="callroute-codegen-") as tmp:
        fresh_root = Path(tmp)
        made = generate(fresh_root, proto_root)
        for p in pkg.iterdir():
            if p.is_file() and _is_generated(p.name) and p.relative_to(repo) not in made:
                p.unlink()
        for rel in made:
            shutil.copyfile(fresh_root / rel, repo / rel)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controlplane.codegen", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="generate into a temporary directory and fail if callroute/v1 is stale")
    args = ap.parse_args(argv)
    try:
        if args.check:
            problems = stale_files()
            if problems:
                print("generated code is stale; run `python -m controlplane.codegen`:", file=sys.stderr)
                for line in problems:
                    print(f"  {line}", file=sys.stderr)
                return 1
            print(f"generated code is up to date ({len(proto_files())} protos)")
            return 0
        changed = regenerate()
        for line in changed:
            print(f"regenerated {line}")
        if not changed:
            print("generated code already up to date")
        return 0
    except CodegenError as e:
        print(f"codegen failed: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
