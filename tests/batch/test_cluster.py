"""client.map over a Dask DataFrame on distributed.LocalCluster (2 worker processes), against llama_cpp.server
and a real PostgreSQL store; and what the worker spec carries (no secrets)."""
from __future__ import annotations

import os

import pytest

from oblix_nb import ModelType, OblixClient, runtime
from oblix_nb.cluster import ClientSpec, is_dask_frame

dd = pytest.importorskip("dask.dataframe", reason="dask[dataframe] is not installed (pip install 'oblix-nb[dask]')")
distributed = pytest.importorskip("distributed", reason="distributed is not installed (pip install 'oblix-nb[dask]')")
pd = pytest.importorskip("pandas")


def _clients_built() -> int:
    from oblix_nb import cluster

    return len(cluster._clients)


def _pid() -> int:
    return os.getpid()


@pytest.mark.slow
def test_dask_map_runs_partitions_on_the_workers_and_logs_to_postgres(openai_server, pg_url, tmp_path):
    client = OblixClient(home=tmp_path, database_url=pg_url, author="driver")
    runtime.run(client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url))
    frame = pd.DataFrame({"n": range(8), "text": [f"Name the number {i}." for i in range(8)]},
                         index=pd.Index(range(100, 108), name="row"))
    ddf = dd.from_pandas(frame, npartitions=4)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None, worker_dashboard_address=None) as cluster, \
                distributed.Client(cluster) as dask:
            out = client.map_sync(ddf, "{text} Answer in one word.", max_tokens=8, temperature=0)
            assert is_dask_frame(out) and out.npartitions == 4
            assert list(out.columns) == ["response", "confidence", "model_id", "route", "input_tokens",
                                         "output_tokens", "latency_s", "error", "cached", "attempts"]
            result = out.compute()
            built = dask.run(_clients_built)
            worker_pids = set(dask.run(_pid).values())

            again = client.map_sync(ddf, "{text} Answer in one word.", max_tokens=8, temperature=0).compute()
        assert list(result.index) == list(frame.index) and result.index.name == "row"
        assert result["error"].isna().all(), result["error"].tolist()
        assert all(isinstance(r, str) for r in result["response"]) and not result["cached"].any()
        assert (result["model_id"] == f"openai:{openai_server.model}").all()
        assert sorted(built.values()) == [1, 1]  # both workers built their own client and mapped partitions
        assert _clients_built() == 0 and os.getpid() not in worker_pids  # nothing ran in the driver
        assert again["cached"].all() and again["response"].tolist() == result["response"].tolist()

        batches = client.sessions.summaries(filter_metadata={"kind": "map"}, with_author=True)
        assert len(batches) == 1 and batches[0]["author"] == "driver"
        replies = [m for m in client.sessions.messages(batches[0]["id"]) if m["role"] == "assistant"]
        assert len(replies) == 8 and len({m["request_id"] for m in replies}) == 8
    finally:
        client.sessions.close()


def test_the_worker_spec_carries_no_secret(tmp_path, monkeypatch):
    secret_key, secret_pw = "sk-not-for-workers", "pw-not-for-workers"

    class Backend:
        model_id = "openai:m"

    client = OblixClient(home=tmp_path)
    from oblix_nb.cluster import ModelSpec

    client._models["openai:m"] = Backend()
    client._hook_specs["openai:m"] = ModelSpec.of(ModelType.OPENAI, "m", None,
                                                  {"base_url": "http://127.0.0.1:9/v1", "timeout": 5.0,
                                                   "client": object()})
    spec = ClientSpec.from_client(client)
    assert spec.models[0].options == (("base_url", "http://127.0.0.1:9/v1"), ("timeout", 5.0))
    assert spec.database_url == client.sessions.url
    from oblix_nb.cluster import _without_password

    assert secret_pw not in _without_password(f"postgresql://u:{secret_pw}@h:5432/db?password={secret_pw}&x=1")
    assert _without_password("postgresql://u:p@h/db?sslmode=require") == "postgresql://u@h/db?sslmode=require"
    import pickle

    assert secret_key.encode() not in pickle.dumps(spec)
    client.sessions.close()


async def test_async_map_of_a_dask_frame_is_lazy(openai_server, tmp_path):
    client = OblixClient(home=tmp_path)
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url)
    ddf = dd.from_pandas(pd.DataFrame({"text": ["a", "b", "c"]}), npartitions=2)
    try:
        out = await client.map(ddf, "Say {text}", max_tokens=4)
        assert is_dask_frame(out) and out.npartitions == 2 and "response" in out.columns
        batch = client.sessions.summaries(filter_metadata={"kind": "map"})
        assert len(batch) == 1 and batch[0]["message_count"] == 0  # nothing ran yet
    finally:
        client.sessions.close()
