"""Builds stdlib_modules.csv: one row per Python standard-library module, with the first paragraph of its
docstring -- real, short English texts about software, under the Python Software Foundation License 2.0
(the docstrings are part of CPython). Run it with any CPython 3.10+ to rebuild the file:

    python notebooks/data/make_stdlib_modules.py

Columns: module, summary (the docstring's first paragraph, whitespace collapsed, at most 400 characters).
"""
from __future__ import annotations

import csv
import importlib
import re
import sys
import warnings
from pathlib import Path

MODULES = """abc argparse array ast asyncio base64 bisect bz2 calendar cmd codecs collections colorsys
concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib dis email
enum filecmp fileinput fnmatch fractions ftplib functools getopt getpass gettext glob graphlib gzip
hashlib heapq hmac html http.client http.server imaplib inspect io ipaddress itertools json keyword
linecache locale logging lzma mailbox mimetypes netrc numbers operator optparse os pathlib pdb pickle
pickletools platform plistlib poplib pprint profile pstats pty queue quopri random re reprlib
rlcompleter runpy sched secrets selectors shelve shlex shutil signal smtplib socket socketserver sqlite3
ssl stat statistics string stringprep struct subprocess symtable tabnanny tarfile tempfile textwrap
threading timeit tokenize trace traceback tracemalloc types typing unittest urllib.parse urllib.request
uuid warnings wave weakref webbrowser xml.dom.minidom xml.etree.ElementTree zipapp zipfile zipimport
zoneinfo""".split()


def summary(name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = importlib.import_module(name).__doc__ or ""
    first = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    text = " ".join(first.split())
    return text if len(text) <= 400 else text[:399].rstrip() + "…"


def main() -> None:
    out = Path(__file__).with_name("stdlib_modules.csv")
    rows = [(name, summary(name)) for name in MODULES]
    rows = [(m, s) for m, s in rows if len(s) >= 20]
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["module", "summary"])
        writer.writerows(rows)
    print(f"{len(rows)} rows -> {out} (Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
