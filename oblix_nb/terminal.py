"""The terminal chat: what ``execute(chat=True)`` runs outside a notebook (a ``you>`` prompt loop)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any, Protocol

from . import runtime
from .errors import BudgetExceededError, ModelCallError, ReplyNotStoredError

CHAT_EXIT_WORDS = ("exit", "quit", "/exit", "/quit", ":q")
CHAT_HELP = ("Chatting in session {session_id}. Type a message and press Enter. To leave: type exit or quit, "
             "press Ctrl-D, or Ctrl-C at the prompt (Ctrl-C during a reply stops that reply).")


class ChatClient(Protocol):
    """What the chat loop needs of its client (an OblixClient)."""

    def execute(self, prompt: str, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, dict]: ...


def read_line(prompt: str) -> str:
    """``input(prompt)`` for the terminal chat, but a Ctrl-C is acted on within 0.1 s.

    The kernel may deliver the terminal's SIGINT to any thread that does not block it (a library's worker, an
    executor thread); CPython then only flags it for the main thread, which would sit in ``input()`` until
    the next Enter. Waiting with short ``select`` timeouts lets the main thread run the handler. Non-terminal
    input (a pipe, a notebook's stdin) and platforms without ``select`` on files use ``input()`` as is.
    """
    stdin = sys.stdin
    try:
        fd = stdin.fileno()
        interactive = os.name == "posix" and stdin.isatty()
    except (AttributeError, OSError, ValueError):
        interactive = False
    if not interactive:
        return input(prompt)
    import select

    sys.stdout.write(prompt)
    sys.stdout.flush()
    while not select.select([fd], [], [], 0.1)[0]:
        pass
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


@contextlib.contextmanager
def sigint_raises():
    """While inside: Ctrl-C raises KeyboardInterrupt in the main thread (Python's default handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def terminal_chat(client: ChatClient, prompt: str | None, sid: str, kwargs: dict) -> dict:
    """The terminal chat loop: ``you>`` prompts until ``exit``/``quit``, Ctrl-D or Ctrl-C at the prompt.

    Each turn is ``client.execute(text, session_id=sid, **kwargs)``. It owns the terminal while it runs, so it
    reads stdin and waits for each reply synchronously (blocking the caller's event loop, which has nothing
    else to do meanwhile; replies run on the package loop). Ctrl-C during a reply stops that reply (kept,
    flagged partial) and returns to the prompt; Ctrl-C at the prompt ends the chat. SIGINT raises
    KeyboardInterrupt here even under ``asyncio.run``, whose own handler would only cancel the task once
    ``input()`` returned. Returns ``{"session_id": sid}``.
    """
    print(CHAT_HELP.format(session_id=sid), file=sys.stderr, flush=True)
    next_prompt: str | None = prompt
    with sigint_raises():
        while True:
            if next_prompt and next_prompt.strip():
                try:
                    runtime.run(client.execute(next_prompt, session_id=sid, **kwargs))
                except KeyboardInterrupt:
                    print("(reply stopped; what arrived was kept, flagged partial)", file=sys.stderr,
                          flush=True)
                except ReplyNotStoredError as exc:
                    # The reply was shown as it streamed; say it is not in the session, keep chatting.
                    print(f"[not stored] {exc}", file=sys.stderr, flush=True)
                except (ModelCallError, BudgetExceededError) as exc:
                    print(f"[error] {exc}", file=sys.stderr, flush=True)
            try:
                next_prompt = read_line("you> ")
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                break
            if next_prompt.strip().lower() in CHAT_EXIT_WORDS:
                break
    print(f"(chat ended; the conversation is session {sid})", file=sys.stderr, flush=True)
    return {"session_id": sid}
