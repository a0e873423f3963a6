"""Progress for ./dev's `pip install -v ...`: reads pip's verbose output on stdin, keeps all of it in a log file,
and prints one short line per phase plus a heartbeat (elapsed time, what is happening, the llama.cpp build
step N/M) so that a cold install, which compiles llama.cpp for minutes, never sits silent.

Usage: python -m pip install -v ... 2>&1 | python tools/install_progress.py --log FILE [--every SECONDS]
Exit status: 0; the caller's `set -o pipefail` carries pip's own exit status. On a pip error the last lines
of the log are printed. Standard library only (it runs before anything is installed).
"""
from __future__ import annotations

import argparse
import re
import sys
import threading
import time

STEP_RE = re.compile(r"^\s*\[(\d+)/(\d+)\]\s+(.*)$")
SOURCE_RE = re.compile(r"([\w.+-]+\.(?:c|cc|cpp|cxx|m|cu))(?:\s|$)")
COLLECT_RE = re.compile(r"^\s*Collecting ([A-Za-z0-9_.\-\[\],]+)")
BUILD_RE = re.compile(r"^\s*Building (?:editable )?wheel for ([A-Za-z0-9_.\-]+)")


def fmt_elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class Progress:
    """What pip is doing, updated from its output lines; ``line()`` is the heartbeat text."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.t0 = time.monotonic()
        self.phase = "starting pip"
        self.detail = ""
        self.step: tuple[int, int] | None = None
        self.compiling = False
        self.lock = threading.Lock()
        self.tail: list[str] = []
        self.collected = 0
        self.announced: set[str] = set()

    def say(self, text: str) -> None:
        self.out.write(f"dev: [{fmt_elapsed(time.monotonic() - self.t0)}] {text}\n")
        self.out.flush()

    def feed(self, raw: str) -> None:
        line = raw.rstrip("\n")
        with self.lock:
            self.tail = (self.tail + [line])[-60:]
            m = STEP_RE.match(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                if not self.compiling:
                    self.compiling = True
                    self.phase = "compiling llama.cpp"
                self.step = (done, total)
                src = SOURCE_RE.findall(m.group(3))
                self.detail = src[-1] if src else ""
                return
            m = COLLECT_RE.match(line)
            if m:
                self.collected += 1
                self.phase, self.detail = "resolving and downloading packages", m.group(1)
                return
            m = BUILD_RE.search(line)
            if m:
                name = m.group(1)
                if name in self.announced:
                    return
                self.announced.add(name)
                if "llama" in name.lower():
                    self.phase, self.detail, self.step = "building llama-cpp-python (configuring)", "", None
                    self.say("building llama-cpp-python from source: compiling llama.cpp took 4.3 min on 2 idle "
                             "cores (measured), far longer on a busy machine (one time: pip caches the wheel)")
                else:
                    self.phase, self.detail = f"building {name}", ""
                return
            if line.startswith("Installing collected packages"):  # pip's own (indented: a build env's)
                self.compiling = False
                self.phase, self.detail, self.step = "installing packages into the venv", "", None
                self.say("installing the packages into the venv")
            elif line.startswith("Successfully installed"):
                self.phase = "done"

    def line(self) -> str:
        with self.lock:
            text = self.phase
            if self.step:
                done, total = self.step
                text += f": step {done}/{total} ({100 * done // max(total, 1)}%)"
            if self.detail:
                text += f" · {self.detail}"
            return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between heartbeat lines")
    args = parser.parse_args(argv)
    progress = Progress()
    finished = threading.Event()

    def heartbeat() -> None:
        while not finished.wait(args.every):
            progress.say(progress.line())

    progress.say(f"pip is installing (full output: {args.log}); a line every {args.every:g} s says what it "
                 f"is doing")
    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    failed = False
    with open(args.log, "w", encoding="utf-8", errors="replace") as log:
        for raw in sys.stdin:
            log.write(raw)
            log.flush()
            progress.feed(raw)
            if raw.startswith("ERROR:") or "error: subprocess-exited-with-error" in raw:
                failed = True
    finished.set()
    if failed:
        sys.stdout.write("dev: pip failed; the last lines of its output:\n" + "\n".join(progress.tail) + "\n")
    else:
        progress.say("pip finished")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
