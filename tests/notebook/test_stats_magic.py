"""%oblix_stats: the table, the figures, options and usage errors, in a real IPython shell."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from sessions.test_stats import stamp  # noqa: E402
from test_magics import client, ip, run, usage_error  # noqa: E402,F401  (ip is a fixture)


def seed_replies():
    c = client()
    now = datetime.now(timezone.utc)
    for title, team, model, ages in (("a", "alpha", "llamacpp:smollm2-135m", (0, 1, 9)),
                                     ("b", "beta", "openai:smollm2:135m", (2, 3))):
        sid = c.sessions.create(title=title, metadata={"team": team})
        for i, age in enumerate(ages):
            ts = now - timedelta(days=age, minutes=5)
            c.sessions.append_message(sid, "user", "q", request_id=f"{title}{i}", timestamp=stamp(ts))
            c.sessions.append_message(sid, "assistant", "a", request_id=f"{title}{i}", model_id=model,
                                      timestamp=stamp(ts + timedelta(seconds=1)),
                                      routing={"target": "local" if title == "a" else "cloud"},
                                      metrics={"time_to_first_token": 0.1 + age, "input_tokens": 10 * (age + 1),
                                               "output_tokens": 5, "tokens_per_second": 20.0})


def test_table_and_dashboard(ip):
    seed_replies()
    result, cap = run(ip, "%oblix_stats --since 7d")
    assert result.success, result.error_in_exec
    assert result.result is None
    kinds = [next(iter(o.data)) if "image/png" not in o.data else "image/png" for o in cap.outputs]
    assert kinds.count("image/png") == 4  # the four figures, each shown once
    table = cap.outputs[0].data
    assert "text/html" in table and "llamacpp:smollm2-135m" in table["text/html"]
    assert "ttft_p50" in table["text/html"]


def test_table_only_options_and_var(ip):
    seed_replies()
    result, cap = run(ip, "%oblix_stats --by day --since 7d --filter team=alpha --no-plot --var week")
    assert result.success, result.error_in_exec
    frame = result.result
    assert isinstance(frame, pd.DataFrame) and frame.index.name == "day"
    assert len(frame) == 8 and frame["requests"].sum() == 2  # alpha's replies of the last 7 days
    assert ip.user_ns["week"] is frame
    assert not any("image/png" in o.data for o in cap.outputs)
    result, _ = run(ip, "%oblix_stats --by route --no-plot")
    assert result.result["requests"].to_dict() == {"cloud": 2, "local": 3}


def test_usage_errors_and_help(ip):
    assert "--by" in usage_error(run(ip, "%oblix_stats --by week")[0])
    assert "since" in usage_error(run(ip, "%oblix_stats --since yesterdayish --no-plot")[0])
    assert "after until" in usage_error(run(ip, "%oblix_stats --since 1d --until 7d --no-plot")[0])
    result, cap = run(ip, "%oblix_stats -h")
    assert result.success and "--since" in cap.stdout and "--by" in cap.stdout
