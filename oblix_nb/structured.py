"""Structured output: one schema concept, from what the user writes to what a backend enforces and what we check.

``schema=`` (on ``execute()``, ``map()`` and ``%%oblix --schema``) is one of

* a **JSON Schema** dict (checked with ``jsonschema``'s meta-schema),
* a **pydantic model class** (its ``model_json_schema()``; replies are validated by the model itself and
  ``execute()`` hands back an instance),
* a **concise spec** string: comma-separated fields ``name [type]``, e.g. ``"label, score float, reasons
  list[str]"``. Types: ``str`` (default; also ``string``/``text``), ``int``/``integer``, ``float``/``number``,
  ``bool``/``boolean``, ``list[T]`` (or ``T[]``), and choices ``a|b|c`` (a string enum). A trailing ``?`` on the
  name or the type makes the field optional (its value may be null). ``name: type`` works too.

:func:`compile_schema` turns any of them into a :class:`Schema`: the JSON Schema (what backends get as a
constraint — see ``ModelBackend.structured_output``), a validator, the instruction text that tells the model
what to produce, the result column dtypes for ``map()``, and a stable fingerprint for caching.

Parsing is lenient about wrapping (code fences, text around one JSON value) and strict about content: the value
must validate, else :class:`StructuredOutputError` says why.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import SchemaError, StructuredOutputError

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["Schema", "SchemaError", "StructuredOutputError", "compile_schema", "parse_spec", "check_for_backend",
           "recursive_ref", "MAX_SCHEMA_DEPTH",
           "schema_from_text", "extract_json"]


_TYPE_WORDS = {
    "str": "string", "string": "string", "text": "string",
    "int": "integer", "integer": "integer",
    "float": "number", "number": "number", "double": "number",
    "bool": "boolean", "boolean": "boolean",
}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _split_top(spec: str) -> list[str]:
    """Split on commas that are not inside [] or ()."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in spec:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
            if depth < 0:
                raise SchemaError(f"unbalanced brackets in schema spec {spec!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise SchemaError(f"unbalanced brackets in schema spec {spec!r}")
    parts.append("".join(cur))
    return parts


def _type_schema(word: str, spec: str) -> dict:
    word = word.strip()
    low = word.lower()
    m = re.fullmatch(r"(?:list|array)\s*\[(.*)\]", word, re.I | re.S) or re.fullmatch(r"(.+?)\s*\[\s*\]", word, re.S)
    if m:
        return {"type": "array", "items": _type_schema(m.group(1).strip() or "str", spec)}
    if low in ("list", "array"):
        return {"type": "array", "items": {"type": "string"}}
    if "|" in word:
        choices = [c.strip() for c in word.split("|")]
        if any(not c for c in choices):
            raise SchemaError(f"empty choice in {word!r} (schema spec {spec!r})")
        return {"type": "string", "enum": list(dict.fromkeys(choices))}
    if low in _TYPE_WORDS:
        return {"type": _TYPE_WORDS[low]}
    raise SchemaError(f"unknown type {word!r} in schema spec {spec!r}; use str, int, float, bool, list[T] "
                      f"or choices like a|b|c")


def parse_spec(spec: str) -> dict:
    """A concise spec (``"label, score float, reasons list[str]"``) as a JSON Schema object.

    Every field is required (an optional one, marked ``?``, may be null) and no other properties are allowed, so
    the schema suits OpenAI's strict mode and grammar-constrained decoding alike.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SchemaError("a schema spec must be a non-empty string like 'label, score float'")
    properties: dict[str, dict] = {}
    required: list[str] = []
    for raw in _split_top(spec):
        item = raw.strip()
        if not item:
            raise SchemaError(f"empty field in schema spec {spec!r}")
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(\??)\s*(?::\s*)?(.*)$", item, re.S)
        if not m:
            raise SchemaError(f"bad field {item!r} in schema spec {spec!r}: expected 'name [type]'")
        name, optional, type_word = m.group(1), bool(m.group(2)), m.group(3).strip()
        if type_word.endswith("?"):
            optional, type_word = True, type_word[:-1].strip()
        if name in properties:
            raise SchemaError(f"field {name!r} appears twice in schema spec {spec!r}")
        prop = _type_schema(type_word or "str", spec)
        if optional:
            prop = {"anyOf": [prop, {"type": "null"}]}
        properties[name] = prop
        required.append(name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _is_pydantic_model(obj: Any) -> bool:
    if not isinstance(obj, type):
        return False
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover
        return False
    return issubclass(obj, BaseModel)


MAX_SCHEMA_DEPTH = 64  # nested objects/arrays in a schema; deeper ones would exhaust Python's stack


def _resolve_ref(root: dict, ref: str) -> Any:
    """The sub-schema a local ``$ref`` (``#``, ``#/$defs/x``, JSON-pointer escapes) points to; SchemaError if
    it is not local (no network: remote schemas are never fetched) or points nowhere."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise SchemaError(f"$ref {ref!r} is not a local reference ('#/$defs/name'): remote schemas are not fetched")
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaError(f"$ref {ref!r} points to nothing in the schema")
    return node


def _check_shape(schema: dict) -> None:
    """Before anything walks the schema recursively (json, jsonschema, grammar compilers): SchemaError if it
    nests deeper than :data:`MAX_SCHEMA_DEPTH` or has a ``$ref`` that is not local or resolves to nothing."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if id(node) in seen:
            raise SchemaError("the schema contains itself (a cycle of Python objects); use $ref for recursion")
        seen.add(id(node))
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep; flatten it "
                              f"(e.g. move repeated parts to $defs)")
        if isinstance(node, dict):
            if "$ref" in node:
                _resolve_ref(schema, node["$ref"])
            stack.extend((v, depth + 1) for v in node.values())
        else:
            stack.extend((v, depth + 1) for v in node)


def recursive_ref(schema: dict) -> str | None:
    """The first ``$ref`` of ``schema`` that refers (directly or through other refs) back into itself, else
    None. Such schemas are valid JSON Schema, but cannot be compiled into a grammar (the embedded model)."""
    def refs_in(node: Any) -> list:
        out, stack = [], [node]
        while stack:
            n = stack.pop()
            if isinstance(n, dict):
                if isinstance(n.get("$ref"), str):
                    out.append(n["$ref"])
                stack.extend(n.values())
            elif isinstance(n, list):
                stack.extend(n)
        return out

    graph: dict[str, list] = {}
    todo = refs_in(schema)
    while todo:
        ref = todo.pop()
        if ref in graph:
            continue
        try:
            graph[ref] = refs_in(_resolve_ref(schema, ref))
        except SchemaError:
            graph[ref] = []
        todo.extend(graph[ref])
    for start in graph:  # a ref that reaches itself (or the root "#", which holds every ref)
        stack, seen = list(graph[start]), set()
        while stack:
            ref = stack.pop()
            if ref == start or ref in ("#", "#/"):
                return start if ref == start else ref
            if ref not in seen:
                seen.add(ref)
                stack.extend(graph.get(ref, ()))
    return None


def check_for_backend(schema: Schema, backend: Any) -> None:
    """SchemaError before any call if ``backend`` cannot take ``schema``: a backend enforcing schemas with a
    grammar (``schema_enforcement == "grammar"``: the embedded llama.cpp model) cannot take a recursive one."""
    if getattr(backend, "schema_enforcement", None) != "grammar":
        return
    ref = recursive_ref(schema.json_schema)
    if ref is not None:
        raise SchemaError(f"the schema is recursive ($ref {ref!r} refers back into itself): "
                          f"{getattr(backend, 'model_id', 'the embedded model')} compiles schemas into a grammar, "
                          f"which cannot be recursive; use a schema of fixed depth, or model_id= a server or "
                          f"cloud model")


def _check_json_schema(schema: dict) -> None:
    _check_shape(schema)
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"a JSON Schema must be JSON-serialisable: {exc}") from None
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"invalid JSON Schema: {exc.message}") from None


def _dtype(prop: dict, defs: dict) -> str:
    """The pandas dtype of one property's column."""
    if "$ref" in prop:
        target = defs.get(prop["$ref"].rsplit("/", 1)[-1])
        return _dtype(target, defs) if isinstance(target, dict) else "object"
    for key in ("anyOf", "oneOf"):
        if key in prop:
            alts = [a for a in prop[key] if isinstance(a, dict) and a.get("type") != "null"]
            return _dtype(alts[0], defs) if len(alts) == 1 else "object"
    kind = prop.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if "enum" in prop and all(isinstance(v, str) for v in prop["enum"]):
        return "category"
    dtypes: dict[Any, str] = {"integer": "Int64", "number": "float64", "boolean": "boolean", "string": "string"}
    return dtypes.get(kind, "object")


@dataclass
class Schema:
    """A compiled ``schema=``: see the module docstring."""

    json_schema: dict
    source: str                                   # "json_schema" | "pydantic" | "spec"
    model: type[BaseModel] | None = None                  # the pydantic class, if one was given
    _validate: Callable | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """Canonical JSON of the schema: equal schemas, equal fingerprints (used in cache keys)."""
        return json.dumps(self.json_schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def properties(self) -> dict:
        """The root object's properties (empty when the root is not an object)."""
        props = self.json_schema.get("properties")
        return props if isinstance(props, dict) else {}

    def columns(self) -> dict[str, str]:
        """``{column: pandas dtype}`` for map()'s result: one per root property, else one ``parsed`` column."""
        defs = self.json_schema.get("$defs") or self.json_schema.get("definitions") or {}
        if self.properties:
            out = {}
            for name, prop in self.properties.items():
                dtype = _dtype(prop if isinstance(prop, dict) else {}, defs)
                out[name] = dtype
            return out
        return {"parsed": "object"}

    def categories(self, column: str) -> list | None:
        prop = self.properties.get(column) or {}
        enum = prop.get("enum")
        return list(enum) if isinstance(enum, list) else None

    def instruction(self) -> str:
        """What the model is told (as a system message) so that even a backend that cannot enforce the schema
        knows what to produce."""
        return ("Answer with a single JSON value only (no prose, no code fences) that matches this JSON Schema:\n"
                + json.dumps(self.json_schema, separators=(",", ":"), ensure_ascii=False))

    def validate(self, value: Any) -> Any:
        """The validated value (a pydantic instance for a pydantic schema); StructuredOutputError if invalid."""
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate(value)
            except ValidationError as exc:
                first: Mapping[str, Any] = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
                raise StructuredOutputError(f"does not match the schema at {where}: {first.get('msg', exc)}") \
                    from None
        if self._validate is None:
            import jsonschema

            cls = jsonschema.validators.validator_for(self.json_schema, default=jsonschema.Draft202012Validator)
            self._validate = cls(self.json_schema).iter_errors
        error = next(iter(self._validate(value)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise StructuredOutputError(f"does not match the schema at {where}: {error.message}")
        return value

    def parse(self, text: str) -> Any:
        """Parse a reply and validate it. Returns a dict/list/... (or a pydantic instance); raises
        StructuredOutputError (with ``.text``) if the reply holds no JSON value or it does not validate."""
        try:
            value = extract_json(text)
        except StructuredOutputError as exc:
            exc.text = text
            raise
        try:
            return self.validate(value)
        except StructuredOutputError as exc:
            exc.text = text
            raise

    def as_plain(self, parsed: Any) -> Any:
        """A parsed value as plain JSON data (pydantic instances dumped)."""
        if self.model is not None and hasattr(parsed, "model_dump"):
            return parsed.model_dump(mode="json")
        return parsed


def compile_schema(schema: Any) -> Schema:
    """A :class:`Schema` from a JSON Schema dict, a pydantic model class, a concise spec string, or a
    :class:`Schema` (returned as is). Anything else, or an invalid schema: :class:`SchemaError`."""
    if isinstance(schema, Schema):
        return schema
    if isinstance(schema, str):
        return Schema(parse_spec(schema), "spec")
    if _is_pydantic_model(schema):
        return Schema(schema.model_json_schema(), "pydantic", model=schema)
    if isinstance(schema, dict):
        if not schema:
            raise SchemaError("an empty JSON Schema constrains nothing; give at least a type or properties")
        _check_json_schema(schema)
        return Schema(json.loads(json.dumps(schema)), "json_schema")
    raise SchemaError(f"schema must be a JSON Schema dict, a pydantic model class or a spec string like "
                      f"'label, score float', not {type(schema).__name__}")


def schema_from_text(text: str, namespace: dict | None = None) -> Schema:
    """A schema written on a magic's command line (``--schema``): the name of a variable in ``namespace``
    holding any ``schema=`` form, a JSON Schema as JSON text (starting with ``{``), or a concise spec."""
    if not isinstance(text, str) or not text.strip():
        raise SchemaError("--schema needs a spec like 'label, score float', a JSON Schema, or a variable name")
    text = text.strip()
    if namespace is not None and text.isidentifier() and text in namespace:
        return compile_schema(namespace[text])
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise SchemaError(f"--schema looks like JSON but does not parse: {exc}") from None
        except RecursionError:
            raise SchemaError(f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep; flatten it") \
                from None
        return compile_schema(value)
    return compile_schema(text)


_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """The JSON value in a reply: the whole text, else a fenced block, else the first ``{...}``/``[...]``."""
    if not isinstance(text, str) or not text.strip():
        raise StructuredOutputError("the reply is empty, not JSON", text=text or "")
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    for block in _FENCE_RE.findall(stripped):
        try:
            return json.loads(block.strip())
        except ValueError:
            pass
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", stripped):
        try:
            value, _ = decoder.raw_decode(stripped, m.start())
            return value
        except ValueError:
            continue
    snippet = stripped if len(stripped) <= 80 else stripped[:77] + "..."
    raise StructuredOutputError(f"the reply is not valid JSON (cut off by max_tokens?): {snippet!r}", text=text)


# ---------------------------------------------------------------------------------------------- enum fields
# (for oblix_nb.confidence: which answers can be chosen by scoring each option)

def _enum_options(prop: Any, defs: dict, depth: int = 0) -> list | None:
    """The string options of one property: ``enum`` (a concise ``a|b|c``, a pydantic ``Literal``), a ``$ref`` to
    an enum definition (a pydantic ``Enum``), a single ``const``, or one of those or null (an optional field).
    None for anything else (free text, numbers, non-string enums, several alternatives)."""
    if not isinstance(prop, dict) or depth > 8:
        return None
    if "$ref" in prop and isinstance(prop["$ref"], str):
        return _enum_options(defs.get(prop["$ref"].rsplit("/", 1)[-1]), defs, depth + 1)
    for key in ("anyOf", "oneOf"):
        if isinstance(prop.get(key), list):
            alts = [a for a in prop[key] if not (isinstance(a, dict) and a.get("type") == "null")]
            return _enum_options(alts[0], defs, depth + 1) if len(alts) == 1 else None
    if isinstance(prop.get("allOf"), list) and len(prop["allOf"]) == 1:
        return _enum_options(prop["allOf"][0], defs, depth + 1)
    values = prop.get("enum")
    if values is None and "const" in prop:
        values = [prop["const"]]
    if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        return list(dict.fromkeys(values))
    return None


def enum_fields(schema: Any) -> dict:
    """``{field: [options]}`` for the fields of ``schema`` (any ``schema=`` form) whose answer is one of a fixed
    set of strings, in the schema's order. A schema whose root is itself a string enum gives ``{None: [...]}``."""
    compiled = compile_schema(schema)
    root = compiled.json_schema
    defs = root.get("$defs") or root.get("definitions") or {}
    if compiled.properties:
        out = {}
        for name, prop in compiled.properties.items():
            options = _enum_options(prop, defs)
            if options is not None:
                out[name] = options
        return out
    options = _enum_options(root, defs)
    return {None: options} if options is not None else {}
