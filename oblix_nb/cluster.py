"""``client.map`` over a Dask DataFrame: partitions are mapped on the Dask workers, each with its own client.

    ddf = dd.from_pandas(frame, npartitions=8)
    out = client.map_sync(ddf, "Classify: {text}", schema="label, score float")   # a Dask DataFrame (lazy)
    out.compute()                                                                 # runs on the workers

How it works:

- The driver's client is described by a :class:`ClientSpec`: its store's URL and author, and how each hooked
  model was hooked (type, name, endpoint, options): plain data that pickles into the task graph. **No secret
  travels in it**: API keys passed to ``hook_model`` are left out (each worker's backends read theirs from the
  worker's own environment, e.g. ``OPENAI_API_KEY``) and a password in the database URL is removed (workers
  use ``PGPASSWORD`` or ``~/.pgpass``, as libpq does).
- The driver creates (or finds) the batch's session in the store and computes the output's ``meta`` from an
  empty frame (no model call); every partition is then ``map_frame`` on a worker with a client built once per
  worker process from the spec, logging into that one batch session. So the result, the cache and resuming
  work as for a pandas frame: re-running the same map (same prompt, schema, models, parameters) takes
  finished rows from the store, whichever worker computed them.

The store must be reachable from every worker: PostgreSQL (``database_url="postgresql://..."``) for a real
cluster; a SQLite file only on one machine (e.g. ``LocalCluster``).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .batch import MapClient
    from .sessions.base import SessionStoreBase

_SERIALISABLE = (str, int, float, bool, type(None))


def is_dask_frame(data: Any) -> bool:
    """True for a Dask DataFrame or Series (checked without importing dask)."""
    module = type(data).__module__ or ""
    return (module.startswith("dask.") or module.startswith("dask_expr")) and hasattr(data, "map_partitions")


@dataclass(frozen=True)
class ModelSpec:
    """How one model was hooked, without its API key."""
    model_type: str
    model_name: str
    endpoint: str | None = None
    options: tuple = ()  # sorted (name, value) pairs of plain values

    @classmethod
    def of(cls, model_type: Any, model_name: str, endpoint: str | None, options: dict) -> ModelSpec:
        plain = tuple(sorted((k, v) for k, v in options.items() if isinstance(v, _SERIALISABLE)))
        return cls(getattr(model_type, "value", str(model_type)), model_name, endpoint, plain)


class SpecSource(Protocol):
    """What a :class:`ClientSpec` is made from (an OblixClient)."""

    sessions: SessionStoreBase
    default_max_tokens: int | None

    @property
    def models(self) -> dict: ...

    @property
    def model_specs(self) -> dict: ...


if TYPE_CHECKING:
    class DaskMapClient(SpecSource, MapClient, Protocol):
        """What :func:`map_dask` needs of its client (an OblixClient): a spec source that can also map."""


# Builds a client (an OblixClient) from ``database_url=`` and ``author=`` keywords: the driver's client class,
# handed to the workers with the task (so this module never imports the client).
ClientFactory = Callable[..., Any]


@dataclass(frozen=True)
class ClientSpec:
    """What a worker needs to build a client like the driver's (see the module docstring)."""
    database_url: str | None
    author: str
    models: tuple = field(default_factory=tuple)
    default_max_tokens: int | None = None

    @classmethod
    def from_client(cls, client: SpecSource) -> ClientSpec:
        store = client.sessions
        url = store.public_url()
        hooked = client.model_specs
        specs = tuple(hooked[model_id] for model_id in client.models if model_id in hooked)
        missing = [model_id for model_id in client.models if model_id not in hooked]
        if missing:
            raise ValueError(f"models {missing} cannot be rebuilt on the workers (hooked without hook_model)")
        return cls(url, store.author, specs, client.default_max_tokens)

    def build(self, factory: ClientFactory):
        """A new client from this spec (in the current process), made by ``factory`` (the client class), its
        models hooked."""
        from . import runtime
        from .errors import StorageError

        try:
            client = factory(database_url=self.database_url, author=self.author)
        except StorageError as exc:
            hint = ("; a worker uses its own credentials (the driver's password is never sent): set PGPASSWORD "
                    "or ~/.pgpass in the workers' environment") if "password" in str(exc).lower() else ""
            raise StorageError(f"on Dask worker {_worker_name()}: {exc}{hint}", path=exc.path,
                               cause=exc.cause) from None
        client.default_max_tokens = self.default_max_tokens
        for spec in self.models:
            runtime.run(client.hook_model(spec.model_type, spec.model_name, spec.endpoint, **dict(spec.options)))
        return client


def _without_password(url: str) -> str:
    """``url`` without its password (the store's :func:`~.sessions.postgres.codec.without_password`)."""
    from .sessions.postgres.codec import without_password

    return without_password(url)


def _worker_name() -> str:
    """This Dask worker's address (or the process id outside a worker)."""
    import os

    try:
        from distributed import get_worker

        return get_worker().address
    except Exception:  # noqa: BLE001 - not in a worker (or distributed not installed)
        return f"process {os.getpid()}"


# One client per worker process and spec, built on first use and shared by the worker's threads.
_clients: dict[ClientSpec, Any] = {}
_clients_lock = threading.Lock()


def worker_client(spec: ClientSpec, factory: ClientFactory):
    """This process's client for ``spec`` (built with ``factory`` on first use)."""
    with _clients_lock:
        client = _clients.get(spec)
        if client is None:
            client = _clients[spec] = spec.build(factory)
        return client


def _map_partition(frame, spec: ClientSpec, factory: ClientFactory, prompt: Any, options: dict):
    """One partition on a worker: ``map_frame_sync`` with this process's client."""
    from .batch import map_frame_sync

    return map_frame_sync(worker_client(spec, factory), frame, prompt, **options)


def map_dask(client: DaskMapClient, data: Any, prompt: Any, **options: Any):
    """``client.map`` for a Dask DataFrame (or Series): a Dask DataFrame on the same partitions and index,
    computed partition by partition on the workers (nothing runs until ``.compute()``/``.persist()``)."""
    from .batch import MapJob

    spec = ClientSpec.from_client(client)
    options = {**options, "progress": False}  # workers draw no bars; Dask has its own progress tools
    # The driver settles the batch session (so workers never race to create it) and the output's columns
    # and dtypes, from an empty frame: no model is called.
    job = MapJob(client, data._meta, prompt, **options)
    options["session_id"] = job.session_id
    # The client's class travels with the task (pickled by reference): each worker builds its client with it.
    return data.map_partitions(_map_partition, spec, type(client), prompt, options, meta=job.frame())
