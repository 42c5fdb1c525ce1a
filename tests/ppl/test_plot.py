"""The PNG plot: the ESS legend sits outside the data area, the threshold is drawn."""

from __future__ import annotations

import pytest

import ppl
from ppl.viz import _figure, plot_result


@pytest.fixture(scope="module")
def result():
    from ppl.stdlib import constraints as C

    lm = ppl.models.load("tiny")
    program = ppl.steer(lm, "The king said", constraints=[C.max_word_length(3)], max_tokens=8)
    return ppl.infer(program, method="smc", particles=8, seed=1, ess_threshold=0.8)


def test_legend_is_outside_the_axes_and_threshold_is_a_line(result, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    fig = _figure(result)
    try:
        ax = fig.axes[0]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = ax.get_legend().get_window_extent(renderer)
        data = ax.get_window_extent(renderer)
        assert not legend.overlaps(data), (legend, data)
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "ESS" in labels and "resampled" in labels
        assert any(lbl.startswith("threshold (ESS < 0.8 × 8)") for lbl in labels), labels
        assert any(abs(line.get_ydata()[0] - 6.4) < 1e-9 for line in ax.get_lines()
                   if len(set(line.get_ydata())) == 1)
    finally:
        plt.close(fig)
    path = plot_result(result, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
