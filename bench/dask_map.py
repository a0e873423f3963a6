"""Dask map throughput: ``client.map`` over a Dask DataFrame with 1 worker vs 2 workers, against two
``llama_cpp.server`` processes, logging to a PostgreSQL store.

    python bench/dask_map.py [--rows 48] [--partitions 8] [--max-tokens 16] [--n-threads 1]

Starts two llama_cpp.server processes (SmolLM2-135M, ``--n-threads`` each) and a PostgreSQL server (tests/pg.py)
on free loopback ports. The driver hooks the model with no endpoint: each worker's client is rebuilt from the
driver's secret-free spec and reads ``OPENAI_BASE_URL`` from its own environment, so worker i talks to server i
(``distributed.SpecCluster`` of ``Nanny`` workers, one thread each, each with its own ``env``). Each run maps
the same rows with ``cache=False`` (every row is generated) after a warm-up run. Prints JSON:
``{"one_worker": {...}, "two_workers": {...}, "scaling": rows/s with 2 workers / rows/s with 1}`` plus the
machine's CPU count and load (the scaling is bounded by the cores the two servers can actually get).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def run(client, frame, partitions: int, servers: list, max_tokens: int) -> dict:
    import dask.dataframe as dd
    from distributed import Client, Nanny, Scheduler, SpecCluster

    workers = {f"w{i}": {"cls": Nanny, "options": {"nthreads": 1, "dashboard_address": None, "host": "127.0.0.1",
                                                   "env": {"OPENAI_BASE_URL": server.base_url}}}
               for i, server in enumerate(servers)}
    ddf = dd.from_pandas(frame, npartitions=partitions)
    with SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}},
                     workers=workers,
                     asynchronous=False) as cluster, Client(cluster):
        client.map_sync(ddf.head(len(servers) * 2, npartitions=-1, compute=False), "Say: {text}",
                        max_tokens=max_tokens, temperature=0, cache=False).compute()  # warm-up: clients built
        t0 = time.perf_counter()
        out = client.map_sync(ddf, "Say: {text}", max_tokens=max_tokens, temperature=0, cache=False).compute()
        wall = time.perf_counter() - t0
    assert len(out) == len(frame) and out["error"].isna().all(), out["error"].dropna().tolist()[:3]
    return {"workers": len(servers), "rows": len(frame), "wall_s": round(wall, 2),
            "rows_per_s": round(len(frame) / wall, 2),
            "output_tokens": int(out["output_tokens"].fillna(0).sum())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--n-threads", type=int, default=1, help="threads of each llama_cpp.server")
    args = parser.parse_args()

    import pandas as pd
    from pg import PostgresServer

    from oblix_nb import ModelType, OblixClient, runtime
    from oblix_nb.localserver import start_openai_server

    servers = [start_openai_server(n_threads=args.n_threads) for _ in range(2)]
    pg = PostgresServer.start()
    try:
        os.environ["OPENAI_BASE_URL"] = servers[0].base_url  # the driver's own hook (workers get their own)
        client = OblixClient(database_url=pg.url, home=Path(pg.root) / "home")
        runtime.run(client.hook_model(ModelType.OPENAI, servers[0].model))
        frame = pd.DataFrame({"text": [f"item number {i}" for i in range(args.rows)]})
        one = run(client, frame, args.partitions, servers[:1], args.max_tokens)
        two = run(client, frame, args.partitions, servers, args.max_tokens)
        client.sessions.close()
    finally:
        for server in servers:
            server.stop()
        pg.stop()
    print(json.dumps({"one_worker": one, "two_workers": two,
                      "scaling": round(two["rows_per_s"] / one["rows_per_s"], 2),
                      "settings": {"partitions": args.partitions, "max_tokens": args.max_tokens,
                                   "server_threads": args.n_threads},
                      "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                  "load_avg_1m": round(os.getloadavg()[0], 2)}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
