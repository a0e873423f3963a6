"""GGUF models from the Hugging Face Hub for the embedded engine (``ModelType.LLAMACPP``).

Model names (what ``hook_model(ModelType.LLAMACPP, name)`` takes, resolved by ``resolve.resolve_gguf``):

``hf:OWNER/REPO/PATH/FILE.gguf``   that file (subfolders allowed); a split model by its first part
                                   (``...-00001-of-00003.gguf``: every part is fetched)
``hf:OWNER/REPO``                  the repo's GGUF in the preferred quantisation (:data:`QUANT_PREFERENCE`:
                                   Q4_K_M first); the choice is printed
``hf:OWNER/REPO:QUANT``            the repo's GGUF in that quantisation (``hf:bartowski/X-GGUF:Q8_0``)
``hf:OWNER/REPO@REV...``           any of the above at a branch, tag or commit (default ``main``)

Files go into huggingface_hub's standard cache (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else
``~/.cache/huggingface/hub``; same layout: ``models--OWNER--REPO/{blobs,snapshots,refs}``), so the ``hf`` CLI,
transformers and llama.cpp's own ``-hf`` see them. Rules:

- A file already in the cache is used as is: no request at all (also for ``hf:OWNER/REPO``, which then picks
  among the cached GGUFs of that revision).
- ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE``): the cache only; a missing file raises HubOfflineError.
- Otherwise the Hub at ``HF_ENDPOINT`` (default https://huggingface.co) is asked for the file's metadata (size,
  sha256, commit); ``HF_TOKEN`` is sent when set (huggingface_hub's own token lookup) and never printed.
- Before any byte is downloaded a line says what (name, quantisation, size) and where; a tqdm.auto progress bar
  follows. The bytes go to ``blobs/<sha256>.incomplete``: a download that is interrupted (killed kernel, lost
  connection) resumes from there on the next hook (HTTP Range).
- The finished file is checked against the Hub's size and sha256 before it enters the cache. A mismatch raises
  ChecksumMismatchError and deletes the download: no corrupt file is left behind.

Environment variables are read at each call (not at import). huggingface_hub is imported only here, only when a
``hf:`` model is resolved, with its telemetry off (``HF_HUB_DISABLE_TELEMETRY=1``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .gguf import quantization_from_name

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
# Which quantisation `hf:OWNER/REPO` picks, best first: 4-5 bit k-quants are the usual size/quality balance for CPU
# inference (Q4_K_M is llama.cpp's and most model cards' recommendation), then the other 4-6 bit types, then 8 bit,
# then the small lossy 2-3 bit ones, then unquantised. Names not listed rank after the listed quantised ones.
QUANT_PREFERENCE = (
    "Q4_K_M", "Q4_K_L", "Q4_K_XL", "Q4_K_S", "Q5_K_M", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1", "Q5_K_S", "Q5_K_L",
    "Q5_0", "Q5_1", "Q6_K", "Q6_K_L", "Q8_0", "Q3_K_L", "Q3_K_XL", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_S", "IQ3_XS",
    "IQ3_XXS", "Q2_K_L", "Q2_K", "Q2_K_XL", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S",
)
UNQUANTISED = ("BF16", "F16", "FP16", "F32", "FP32")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Not models: vision projectors, importance matrices, LoRA adapters.
_NOT_A_MODEL = re.compile(r"(^|[/_.-])(mmproj|imatrix|lora|adapter)([/_.-]|$)", re.IGNORECASE)


class HubError(OSError):
    """A ``hf:`` model could not be resolved or downloaded (message says why and what to do)."""


class HubNotFoundError(HubError, FileNotFoundError):
    """The repo, revision, file or quantisation does not exist (or needs a token: ``HF_TOKEN``)."""


class HubOfflineError(HubError, FileNotFoundError):
    """The file is not in the cache and the Hub may not be asked (``HF_HUB_OFFLINE``) or could not be reached."""


class ChecksumMismatchError(HubError):
    """The downloaded file's sha256 or size is not what the Hub's metadata says; the download was deleted."""


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf:`` model name."""

    repo_id: str
    revision: str = DEFAULT_REVISION
    filename: str | None = None  # path inside the repo (with subfolders)
    quant: str | None = None     # requested quantisation when no filename is given

    def __str__(self) -> str:
        rev = "" if self.revision == DEFAULT_REVISION else f"@{self.revision}"
        tail = f"/{self.filename}" if self.filename else f":{self.quant}" if self.quant else ""
        return f"hf:{self.repo_id}{rev}{tail}"


def parse_hf(name: str) -> HubSpec:
    """Parse ``hf:OWNER/REPO[@REV][/PATH.gguf | :QUANT]``; ValueError for anything else."""
    if not isinstance(name, str) or not name.startswith("hf:"):
        raise ValueError(f"not a Hugging Face model name (hf:OWNER/REPO[/FILE.gguf]): {name!r}")
    body = name[3:].strip().strip("/")
    parts = body.split("/")
    if len(parts) < 2:
        raise ValueError(f"{name!r}: expected hf:OWNER/REPO, hf:OWNER/REPO:QUANT or hf:OWNER/REPO/FILE.gguf")
    owner, repo, rest = parts[0], parts[1], parts[2:]
    quant = None
    if not rest and ":" in repo:
        repo, quant = repo.rsplit(":", 1)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", quant):
            raise ValueError(f"{name!r}: {quant!r} is not a quantisation name (e.g. Q4_K_M, Q8_0)")
        quant = quant.upper()
    revision = DEFAULT_REVISION
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not revision or not re.fullmatch(r"[A-Za-z0-9._-]+", revision):
            raise ValueError(f"{name!r}: bad revision {revision!r}")
    for part in (owner, repo):
        if not _REPO_PART.match(part) or ".." in part:
            raise ValueError(f"{name!r}: {part!r} is not a valid Hub owner or repo name")
    filename = None
    if rest:
        if any(p in ("", ".", "..") for p in rest):
            raise ValueError(f"{name!r}: bad path inside the repo")
        filename = "/".join(rest)
        if not filename.lower().endswith(".gguf"):
            raise ValueError(f"{name!r}: the file must be a .gguf (the embedded engine loads GGUF only)")
    return HubSpec(f"{owner}/{repo}", revision, filename, quant)


# ------------------------------------------------------------------------------------------- settings and cache

def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now."""
    return _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder from the environment as it is now (``HF_HUB_CACHE``,
    ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``/hub, ``XDG_CACHE_HOME``/huggingface/hub, ``~/.cache/huggingface/hub``)."""
    def expand(p: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(p)))

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return expand(os.environ[var])
    if os.environ.get("HF_HOME"):
        return expand(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return expand(xdg) / "huggingface" / "hub"


def repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _commit_for(storage: Path, revision: str) -> str | None:
    if _COMMIT.match(revision):
        return revision
    try:
        commit = (storage / "refs" / revision).read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def cached_ggufs(repo_id: str, revision: str = DEFAULT_REVISION, cache: Path | None = None) -> dict[str, Path]:
    """GGUF files of the repo at ``revision`` that are complete in the cache: {path in repo: local path}."""
    storage = repo_folder(cache or hub_cache_dir(), repo_id)
    commit = _commit_for(storage, revision)
    if commit is None:
        return {}
    snapshot = storage / "snapshots" / commit
    found = {}
    for path in sorted(snapshot.rglob("*")) if snapshot.is_dir() else ():
        if path.name.lower().endswith(".gguf") and path.is_file():  # is_file follows the symlink to its blob
            found[path.relative_to(snapshot).as_posix()] = path
    return found


def cached_file(spec: HubSpec, filename: str, cache: Path | None = None) -> Path | None:
    """The cached path of ``filename`` in ``spec``'s repo at its revision (all split parts present), else None."""
    files = cached_ggufs(spec.repo_id, spec.revision, cache)
    parts = split_parts(filename)
    if all(p in files for p in parts):
        return files[filename]
    return None


def split_parts(filename: str) -> list[str]:
    """All part paths of a split GGUF given its first part (``x-00001-of-00003.gguf``); else ``[filename]``."""
    m = _SPLIT.search(filename)
    if not m or int(m.group(1)) != 1:
        return [filename]
    count = int(m.group(2))
    stem = filename[:m.start()]
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


# ------------------------------------------------------------------------------------------ choosing a file

def _quant_of(path: str) -> str | None:
    """Quantisation of a repo path: from the file name, else from a folder name (``Q4_K_M/model.gguf``)."""
    for part in reversed(path.split("/")):
        q = quantization_from_name(part if part.lower().endswith(".gguf") else part + ".gguf")
        if q:
            return q
    return None


def _rank(quant: str | None) -> tuple:
    q = (quant or "").upper()
    q = q[3:] if q.startswith("UD-") else q
    if q in QUANT_PREFERENCE:
        return (0, QUANT_PREFERENCE.index(q))
    if q in UNQUANTISED:
        return (2, UNQUANTISED.index(q))
    return (1, 0) if q else (3, 0)


def gguf_choices(paths: Iterable[str]) -> dict[str, str | None]:
    """{path of a loadable model file (a single GGUF or a split's first part): its quantisation}; projector,
    imatrix and adapter files and the later parts of splits left out."""
    out = {}
    for path in paths:
        if not path.lower().endswith(".gguf") or _NOT_A_MODEL.search(path):
            continue
        m = _SPLIT.search(path)
        if m and int(m.group(1)) != 1:
            continue
        out[path] = _quant_of(path)
    return out


def pick_gguf(paths: Iterable[str], quant: str | None = None) -> tuple[str, str | None, dict]:
    """``(path, quantisation, choices)``: the file ``hf:OWNER/REPO[:QUANT]`` means among a repo's ``paths``.

    With ``quant``: a file of that quantisation (HubNotFoundError if none). Without: the best by
    :data:`QUANT_PREFERENCE`; among equals, the shallowest path, then the shortest name."""
    choices = gguf_choices(paths)
    if not choices:
        raise HubNotFoundError("no GGUF model file in the repo")
    pool = list(choices)
    if quant:
        want = quant.upper()
        pool = [p for p in pool if (choices[p] or "").upper() in (want, "UD-" + want)]
        if not pool:
            have = sorted({q for q in choices.values() if q}) or ["(none named)"]
            raise HubNotFoundError(f"no {want} file; quantisations there: {', '.join(have)}")
    best = min(pool, key=lambda p: (_rank(choices[p]), p.count("/"), len(p), p))
    return best, choices[best], choices


# ---------------------------------------------------------------------------------------------- downloading

def _hf():
    """huggingface_hub, imported on first use with telemetry off and offline mode as the environment says now."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError as exc:
        raise HubError("hf: models need huggingface_hub: pip install 'oblix-nb[local]'") from exc
    constants.HF_HUB_DISABLE_TELEMETRY = True
    constants.HF_HUB_OFFLINE = hub_offline()  # read at its import; keep it in step with the environment
    return huggingface_hub


def _human(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value: float = size
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""  # pragma: no cover


def _say(message: str) -> None:
    """Tell the user (stderr: shown in the notebook cell and the terminal) and the log."""
    log.info(message)
    print(f"oblix_nb: {message}", file=sys.stderr, flush=True)


def _hub_failure(spec: HubSpec, exc: BaseException, endpoint: str) -> HubError:
    """A huggingface_hub / HTTP exception as a HubError with one clear line (never a header or token)."""
    name = type(exc).__name__
    first = (str(exc).strip().splitlines() or [name])[0]
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if name in ("RepositoryNotFoundError", "GatedRepoError") or status == 401:
        return HubNotFoundError(f"{spec}: repo {spec.repo_id!r} not found at {endpoint} or not accessible "
                                f"(private or gated repos need HF_TOKEN) [{first}]")
    if name == "RevisionNotFoundError":
        return HubNotFoundError(f"{spec}: revision {spec.revision!r} not found [{first}]")
    if name in ("RemoteEntryNotFoundError", "EntryNotFoundError") or status == 404:
        return HubNotFoundError(f"{spec}: file not found in the repo [{first}]")
    return HubOfflineError(f"{spec}: could not reach the Hugging Face Hub at {endpoint} ({name}: {first}); "
                           f"the file is not in the cache ({hub_cache_dir()})")


@dataclass
class _Remote:
    path: str       # in the repo
    url: str        # where to GET it
    commit: str
    etag: str       # blob name: the sha256 for LFS files, the git blob sha1 otherwise
    size: int
    drop_auth: bool
    listed_sha: str | None = None  # the sha256 the repo listing gave, if it was asked


def _expected_hash(etag: str, listed: str | None) -> tuple[str, str]:
    """(algorithm, hex) the bytes must hash to: the LFS sha256 (the ETag of LFS files), else the git blob sha1."""
    if _SHA256.match(etag):
        if listed and listed != etag:
            raise HubError(f"the Hub's metadata disagrees with itself (ETag {etag} vs listed sha256 {listed})")
        return "sha256", etag
    if listed and _SHA256.match(listed):
        return "sha256", listed
    if re.fullmatch(r"[0-9a-f]{40}", etag):
        return "git-sha1", etag
    raise HubError(f"the Hub gave no checksum for the file (ETag {etag!r}); refusing an unverifiable download")


def _digest(path: Path, algorithm: str, size: int) -> str:
    h = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:  # no symlinks (some file systems): a copy, as huggingface_hub does then
        shutil.copyfile(blob, pointer)


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    if revision != commit:
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text().strip() != commit:
            ref.write_text(commit)


def _fetch(remote: _Remote, storage: Path, algorithm: str, digest: str, *, tqdm_class, headers: dict) -> None:
    """Download ``remote`` into ``blobs/<etag>``, resuming ``blobs/<etag>.incomplete``; verify before moving."""
    from filelock import FileLock
    from huggingface_hub.file_download import http_get

    blob = storage / "blobs" / remote.etag
    partial = blob.with_name(remote.etag + ".incomplete")
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = storage.parent / ".locks" / storage.name / f"{remote.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        if blob.is_file():
            return
        have = partial.stat().st_size if partial.is_file() else 0
        if have > remote.size:
            partial.unlink()
            have = 0
        free = shutil.disk_usage(blob.parent).free
        if remote.size - have > free:
            raise HubError(f"not enough disk space in {blob.parent}: {_human(remote.size - have)} needed, "
                           f"{_human(free)} free")
        if have:
            _say(f"resuming {remote.path} at {_human(have)} of {_human(remote.size)}")
        try:
            with open(partial, "ab") as f:
                http_get(remote.url, f, resume_size=have, headers=headers, expected_size=remote.size,
                         displayed_filename=remote.path.rsplit("/", 1)[-1], tqdm_class=tqdm_class)
        except Exception as exc:  # noqa: BLE001 - httpx errors after huggingface_hub's own retries, OSError
            got = partial.stat().st_size if partial.is_file() else 0
            if got > remote.size or (isinstance(exc, OSError) and "Consistency check" in str(exc)):
                # the server's bytes do not add up to the announced size: not an interruption, unusable
                partial.unlink(missing_ok=True)
                raise ChecksumMismatchError(
                    f"{remote.path}: the server sent {_human(got)} where the Hub's metadata says "
                    f"{remote.size} bytes; the download was deleted and nothing was cached") from exc
            raise HubError(f"download of {remote.path} interrupted at {_human(got)} of {_human(remote.size)} "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); hook the "
                           f"model again to resume") from exc
        got_size = partial.stat().st_size
        actual = _digest(partial, algorithm, got_size) if got_size == remote.size else None
        if actual != digest:
            partial.unlink(missing_ok=True)
            what = (f"{algorithm} {actual}, expected {digest}" if actual else
                    f"{got_size} bytes, expected {remote.size}")
            raise ChecksumMismatchError(
                f"{remote.path}: the downloaded file does not match the Hub's metadata ({what}); it was deleted "
                f"and nothing was cached. Hook again to retry; if it repeats, check HF_ENDPOINT or the network")
        os.chmod(partial, 0o644)
        os.replace(partial, blob)


def resolve_hf(name: str, *, tqdm_class=None, notify: Callable[[str], None] | None = None) -> Path:
    """Local path of the GGUF that ``name`` (``hf:...``) means: from the cache, else downloaded into it (see the
    module docstring). For a split model: the first part (all parts present). Raises ValueError for a malformed
    name and a HubError (an OSError; HubNotFoundError / HubOfflineError are FileNotFoundErrors) otherwise."""
    say = notify or _say
    spec = parse_hf(name)
    cache = hub_cache_dir()
    storage = repo_folder(cache, spec.repo_id)
    endpoint = hub_endpoint()
    if spec.filename:
        path = cached_file(spec, spec.filename, cache)
        if path is not None:
            return path
    else:
        cached = cached_ggufs(spec.repo_id, spec.revision, cache)
        complete = [p for p in cached if all(q in cached for q in split_parts(p))]
        if complete:
            try:
                chosen, quant, _ = pick_gguf(complete, spec.quant)
            except HubNotFoundError:
                pass  # that quantisation is not cached: ask the Hub
            else:
                say(f"{spec}: using the cached {quant or 'GGUF'} file {chosen}")
                return cached[chosen]
    if hub_offline():
        raise HubOfflineError(f"{spec} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; "
                              f"unset it to download, or hook a cached model")
    hf = _hf()
    if tqdm_class is None:
        from tqdm.auto import tqdm
        tqdm_class = tqdm
    from huggingface_hub.utils import build_hf_headers

    from .._version import __version__

    listed: dict[str, tuple[int | None, str | None]] = {}
    try:
        if spec.filename:
            chosen = spec.filename
        else:
            info = hf.HfApi(endpoint=endpoint, library_name="oblix_nb", library_version=__version__).model_info(
                spec.repo_id, revision=spec.revision, files_metadata=True)
            for s in info.siblings or ():
                lfs = getattr(s, "lfs", None)
                listed[s.rfilename] = (getattr(s, "size", None), getattr(lfs, "sha256", None) if lfs else None)
            try:
                chosen, quant, choices = pick_gguf(listed, spec.quant)
            except HubNotFoundError as exc:
                raise HubNotFoundError(f"{spec}: {exc}") from None
            others = sorted({q for p, q in choices.items() if q and p != chosen and q != quant})
            say(f"{spec}: picked {quant or 'the only GGUF'} ({chosen})"
                + (f"; also there: {', '.join(others)} (choose with hf:{spec.repo_id}:QUANT)" if others else ""))
            path = cached_file(HubSpec(spec.repo_id, spec.revision), chosen, cache)
            if path is not None:
                return path
        remotes = []
        for part in split_parts(chosen):
            url = hf.hf_hub_url(spec.repo_id, part, revision=spec.revision, endpoint=endpoint)
            meta = hf.get_hf_file_metadata(url, endpoint=endpoint, library_name="oblix_nb",
                                           library_version=__version__, timeout=10)
            if not meta.commit_hash or not meta.etag or meta.size is None:
                raise HubError(f"{spec}: {endpoint} does not answer like the Hugging Face Hub (no commit, ETag or "
                               f"size for {part}); check HF_ENDPOINT")
            size, sha = listed.get(part, (None, None))
            if size is not None and size != meta.size:
                raise HubError(f"{spec}: the Hub's metadata disagrees about the size of {part}")
            location = meta.location or url
            remotes.append(_Remote(part, location, meta.commit_hash, meta.etag, meta.size,
                                   drop_auth=urlsplit(location).netloc != urlsplit(url).netloc, listed_sha=sha))
    except HubError:
        raise
    except Exception as exc:  # noqa: BLE001 - huggingface_hub / httpx errors, reported as one clear line
        raise _hub_failure(spec, exc, endpoint) from exc
    commit = remotes[0].commit
    snapshot = storage / "snapshots" / commit
    missing = [r for r in remotes if not (storage / "blobs" / r.etag).is_file()]
    if missing:
        total = sum(r.size for r in missing)
        quant = _quant_of(chosen)
        say(f"downloading {spec.repo_id}/{chosen}{f' ({quant})' if quant else ''}, {_human(total)}, from {endpoint} "
            f"into {cache} (resumable: if interrupted, hooking it again continues)")
    headers = build_hf_headers(library_name="oblix_nb", library_version=__version__)
    for remote in remotes:
        algorithm, digest = _expected_hash(remote.etag, remote.listed_sha)
        h = {k: v for k, v in headers.items() if not (remote.drop_auth and k.lower() == "authorization")}
        try:
            _fetch(remote, storage, algorithm, digest, tqdm_class=tqdm_class, headers=h)
        except HubError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _hub_failure(spec, exc, endpoint) from exc
        _link(storage / "blobs" / remote.etag, snapshot / remote.path)
    _write_ref(storage, spec.revision, commit)
    return snapshot / chosen
