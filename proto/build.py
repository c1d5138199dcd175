"""Regenerates the agent service's Python modules from ``agent.proto`` (needs grpcio-tools).

Run ``python -m marlctl.proto.build``. Writes ``agent_pb2.py``, ``agent_pb2.pyi`` and
``agent_pb2_grpc.py`` next to the ``.proto`` and rewrites the generated absolute import
``import agent_pb2`` into ``from marlctl.proto import agent_pb2``, so the modules work as
part of the installed package. The generated files are committed: an installed wheel (the
serving image) needs neither grpcio-tools nor this script.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("agent.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _rewrite_imports(text: str, modules: list[str]) -> str:
    """``import agent_pb2 as agent__pb2`` -> ``from marlctl.proto import agent_pb2 as agent__pb2``."""
    for mod in modules:
        text = re.sub(rf"^import {mod}\b", f"from marlctl.proto import {mod}", text, flags=re.M)
    return text


def build(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Generate the modules for every ``PROTO_FILES`` entry; returns the written paths."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("grpcio-tools is not installed: pip install 'marlctl[dev]'") from exc
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROTO_FILES:
            rc = protoc.main([
                "grpc_tools.protoc",
                f"-I{proto_dir}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(proto_dir / name),
            ])
            if rc != 0:
                raise SystemExit(f"protoc failed on {name} (exit {rc})")
        modules = [Path(n).stem + "_pb2" for n in PROTO_FILES]
        for name in PROTO_FILES:
            stem = Path(name).stem
            for suffix in GENERATED_SUFFIXES:
                src = Path(tmp) / f"{stem}{suffix}"
                dst = proto_dir / src.name
                staged = dst.with_name(dst.name + ".tmp")
                staged.write_text(_rewrite_imports(src.read_text(), modules))
                os.replace(staged, dst)
                written.append(dst)
    return written


def main() -> None:
    for path in build():
        print(path, file=sys.stdout)


if __name__ == "__main__":
    main()
