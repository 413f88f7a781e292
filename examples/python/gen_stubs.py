#!/usr/bin/env python3
"""Generates the Learning Hub's Python stubs from ``proto/`` with grpcio-tools.

    python3 examples/python/gen_stubs.py [--out DIR]

writes ``learninghub/v1/hub_pb2.py`` and ``hub_pb2_grpc.py`` (and the
``google/api`` modules hub.proto imports) under DIR
(default: ``examples/python/generated``, which git ignores). ``agent.py``
calls :func:`ensure_stubs` itself, so running this by hand is only needed to
use the stubs from your own code: put DIR on ``sys.path`` and
``from learninghub.v1 import hub_pb2, hub_pb2_grpc``.

The stubs are regenerated whenever ``hub.proto`` changes (a stamp file holds
the hash of the proto they were generated from). Generation writes to a
temporary directory first and moves each file into place, so two agents
starting at once never import a half-written module.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "learninghub/v1/hub.proto"
# What hub.proto imports from proto/ itself: the google.api.http option
# that says which REST path serves each RPC (the JSON gateway's routes).
IMPORTS = ("google/api/http.proto", "google/api/annotations.proto")
DEFAULT_OUT = HERE / "generated"
STAMP = ".proto-sha256"
GENERATED = (
    "learninghub/v1/hub_pb2.py",
    "learninghub/v1/hub_pb2_grpc.py",
    "google/api/http_pb2.py",
    "google/api/annotations_pb2.py",
)

INSTALL_HINT = "install them with: python3 -m pip install -r examples/python/requirements.txt"


def proto_hash(proto_root: Path = PROTO_ROOT) -> str:
    digest = hashlib.sha256()
    for name in (PROTO, *IMPORTS):
        digest.update((proto_root / name).read_bytes())
    return digest.hexdigest()


def stubs_current(out: Path, proto_root: Path = PROTO_ROOT) -> bool:
    stamp = out / STAMP
    return (
        stamp.is_file()
        and stamp.read_text().strip() == proto_hash(proto_root)
        and all((out / name).is_file() for name in GENERATED)
    )


def generate(out: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Runs protoc (bundled with grpcio-tools) on hub.proto into ``out``."""
    try:
        from grpc_tools import protoc
    except ImportError as e:
        raise SystemExit(f"grpcio-tools is not installed ({e}); {INSTALL_HINT}") from e
    if not (proto_root / PROTO).is_file():
        raise SystemExit(f"{proto_root / PROTO} not found: run from a checkout of the repository")
    # google/protobuf/{struct,timestamp}.proto ship inside grpc_tools.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".stubs-", dir=out))
    try:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"-I{well_known}",
                f"--python_out={staging}",
                f"--grpc_python_out={staging}",
                PROTO,
                *IMPORTS,
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {proto_root / PROTO} (exit {code})")
        for name in GENERATED:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
        stamp_tmp = staging / STAMP
        stamp_tmp.write_text(proto_hash(proto_root) + "\n")
        os.replace(stamp_tmp, out / STAMP)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_stubs(out: Path = DEFAULT_OUT, proto_root: Path = PROTO_ROOT) -> Path:
    """Generates the stubs into ``out`` unless they match the proto, puts
    ``out`` on ``sys.path`` and returns it."""
    if not stubs_current(out, proto_root):
        generate(out, proto_root)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--proto-root", type=Path, default=PROTO_ROOT, help="directory holding learninghub/")
    args = parser.parse_args()
    generate(args.out.resolve(), args.proto_root.resolve())
    for name in GENERATED:
        print(args.out / name)


if __name__ == "__main__":
    main()
