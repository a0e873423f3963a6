"""Model ids with ``$`` (mathtext delimiters for matplotlib) are drawn literally in every plot_stats() figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from oblix_nb import OblixClient  # noqa: E402
from oblix_nb.plots import label  # noqa: E402

IDS = ["openai:gpt-$x^{$", "a$b", "$$", "m:$\\frac{1}{$", "x$_$y", "ok:model"]


@pytest.fixture
def client(tmp_home):
    c = OblixClient(home=tmp_home)
    yield c
    c.sessions.close()


@pytest.mark.parametrize("model_id", IDS[:-1])
def test_every_figure_draws_with_a_dollar_in_the_model_id(client, model_id):
    sid = client.sessions.create()
    messages = []
    for i, model in enumerate([model_id, "ok:model"] * 4):
        messages += [{"role": "user", "content": "q", "request_id": f"r{i}"},
                     {"role": "assistant", "content": "a", "model_id": model, "request_id": f"r{i}",
                      "metrics": {"time_to_first_token": 0.1 + i / 10, "input_tokens": 10 + i,
                                  "output_tokens": 3, "cost_usd": 0.001}}]
    client.sessions.append_messages(sid, messages)
    for theme in ("light", "dark"):
        dashboard = client.plot_stats(theme=theme)
        try:
            for name, fig in dashboard.figures.items():
                fig.canvas.draw()  # raised ValueError (mathtext) for 3 of the 4 figures
            legend = dashboard["tokens_and_cost"].legends[0]
            drawn = [t.get_text() for t in legend.get_texts()]
            # the text matplotlib shows is the id itself (\$ renders as $)
            assert any(t.replace("\n", "").replace("\\$", "$") == model_id for t in drawn), drawn
        finally:
            dashboard.close()


def test_label_escapes_every_dollar_and_keeps_the_rest():
    for model_id in IDS + [None]:
        text = label(model_id, 20)
        unescaped = text.replace("\n", "").replace("\\$", "$")
        assert unescaped == ("(none)" if model_id is None else model_id)
        assert text.count("$") == text.count("\\$")
