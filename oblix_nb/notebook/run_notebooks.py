"""Execute notebooks headless with nbclient; fail on any error output; print a summary.

    python -m oblix_nb.notebook.run_notebooks notebooks/01-quickstart.ipynb [more.ipynb ...]
        [--timeout 120] [--kernel python3] [--output DIR]

Each notebook runs in a fresh kernel started from this Python (the kernelspec's ``python`` is this
interpreter), with its own folder as the working directory, ``OBLIX_HOME`` set to a temporary folder (so
nothing lands in ~/.oblix) and this package importable. Every cell runs (errors don't stop the run), then
every ``error`` output is reported. Exit status 0 only if every notebook ran without an error output.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def kernel_env(home: str) -> dict:
    env = dict(os.environ)
    env["OBLIX_HOME"] = home
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def run_notebook(path: str | os.PathLike, timeout: int = 120, kernel_name: str = "python3",
                 output: str | os.PathLike | None = None) -> dict:
    """Execute one notebook. Returns ``{path, cells, seconds, errors: [{cell, ename, evalue}], nb}``; errors of
    cells tagged ``raises-exception`` are expected and not listed."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    started = time.monotonic()
    errors: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="oblix-nb-run-") as home:
        client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        try:
            client.execute(env=kernel_env(home))
        except (CellTimeoutError, DeadKernelError) as exc:
            errors.append({"cell": None, "ename": type(exc).__name__, "evalue": str(exc).splitlines()[0]})
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "raises-exception" in cell.get("metadata", {}).get("tags", []):
            continue  # a cell tagged raises-exception (nbclient's convention) shows an error on purpose
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append({"cell": index, "ename": out.get("ename"),
                               "evalue": _ANSI.sub("", str(out.get("evalue", ""))).strip()})
    if output is not None:
        out_dir = Path(output)
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    return {"path": str(path), "cells": code_cells, "seconds": time.monotonic() - started, "errors": errors,
            "nb": nb}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oblix_nb.notebook.run_notebooks",
                                     description="Execute notebooks with nbclient; fail on any error output.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help=".ipynb files (or folders of them)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per cell (default 120)")
    parser.add_argument("--kernel", default="python3", help="kernel name (default python3)")
    parser.add_argument("--output", help="also write the executed notebooks to this folder")
    args = parser.parse_args(argv)

    paths: list[Path] = []
    for p in map(Path, args.paths):
        if p.is_dir():
            paths += sorted(p.glob("*.ipynb"))
        elif p.is_file():
            paths.append(p)
        else:
            parser.error(f"no such notebook: {p}")
    failed = 0
    for path in paths:
        print(f"running {path} …", flush=True)
        result = run_notebook(path, timeout=args.timeout, kernel_name=args.kernel, output=args.output)
        status = "ok" if not result["errors"] else "FAILED"
        print(f"  {status}: {result['cells']} code cells in {result['seconds']:.1f} s", flush=True)
        for err in result["errors"]:
            where = f"cell {err['cell']}" if err["cell"] is not None else "kernel"
            print(f"    {where}: {err['ename']}: {err['evalue']}", flush=True)
        failed += bool(result["errors"])
    print(f"{len(paths) - failed}/{len(paths)} notebook(s) ran without errors")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
