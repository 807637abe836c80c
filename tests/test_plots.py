"""Colours of the silo figures: final silos are told apart, brief labels never look like one."""
import numpy as np
from matplotlib.colors import to_rgba

from tensorsim.analysis import figures, plots, runs
from tensorsim.analysis.dims import Layout


def is_grey(c):
    return c[0] == c[1] == c[2]


def check_silo_colours(lab):
    colours = plots.silo_colours(lab)
    final = set(np.unique(lab[-1]).tolist())
    assert set(colours) == set(np.unique(lab).tolist())  # every label present has a colour
    final_colours = [colours[v] for v in final]
    assert len(set(final_colours)) == len(final_colours)  # pairwise distinct
    assert not any(is_grey(c) for c in final_colours)
    for v, c in colours.items():
        if v not in final:
            assert c not in final_colours and is_grey(c), v
    return colours


def authors_like_run():
    """30 agents, 25 labels seen over the run, three final silos (labels 17, 18, 19): where a 20-colour map
    stretched over the 25 labels gave two of them the same grey."""
    T, n = 12, 30
    lab = np.empty((T, n), dtype=np.int64)
    lab[0] = np.r_[np.arange(25), np.arange(5)]
    for t in range(1, T):
        lab[t] = np.where(np.arange(n) % 3 == 0, 17, np.where(np.arange(n) % 3 == 1, 18, 19))
        lab[t, : max(0, 25 - 4 * t)] = np.arange(max(0, 25 - 4 * t))  # transients fade out
    lab[-1, 0] = -1  # an unlabeled answer among the finals
    return lab


def test_final_silos_get_distinct_colours_transients_get_greys():
    lab = authors_like_run()
    colours = check_silo_colours(lab)
    assert len({colours[v] for v in (17, 18, 19, -1)}) == 4
    # the largest final silo takes the first palette colour, whatever its label id
    sizes = {v: int((lab[-1] == v).sum()) for v in (17, 18, 19)}
    assert colours[max(sizes, key=sizes.get)] == to_rgba("tab:blue")
    rng = np.random.default_rng(0)
    for L, T, n in [(5, 4, 10), (40, 6, 60), (300, 3, 400)]:  # more final silos than the palette holds
        check_silo_colours(rng.integers(-1, L, size=(T, n)))
    assert plots.silo_colours(np.zeros((3, 4), dtype=np.int64)) == {0: to_rgba("tab:blue")}


def test_silo_figure_draws_the_assigned_colours():
    lab = authors_like_run()
    colours = plots.silo_colours(lab)
    names = [f"flower{i}" for i in range(25)]
    fig = plots.silo_figure({0: lab}, names, "t")
    ax = fig.axes[0]
    drawn = [tuple(h.get_facecolor()) for h in ax.get_legend().legend_handles]
    finals, sizes = np.unique(lab[-1], return_counts=True)
    by_size = [v for _, v in sorted(zip(-sizes, finals.tolist()))]
    assert drawn == [colours[v] for v in by_size]
    img = ax.get_images()[0]
    present = sorted(colours)
    assert [tuple(img.cmap(i)) for i in range(len(present))] == [colours[v] for v in present]
    plots.plt.close(fig)


def test_report_silo_size_layers_distinct_and_other_grey(tmp_path, monkeypatch):
    labels, colours = figures.rank_layer_style(6, True)
    assert labels[-1] == "other silos" and len(set(colours)) == 7
    assert is_grey(colours[-1]) and not any(is_grey(c) for c in colours[:-1])
    assert figures.rank_layer_style(3, False) == (labels[:3], colours[:3])  # the same colour per rank in every panel
    # the legend lists every layer any panel draws, not only the first panel's
    small = runs.Cell(tmp_path / "a", {"k": 1, "p": 0.2, "replicas": [{"replica": 0}]})
    large = runs.Cell(tmp_path / "b", {"k": 5, "p": 0.2, "replicas": [{"replica": 0}]})
    mats = {small.dir: np.array([[0, 1, 2], [0, 0, 2]]), large.dir: np.tile(np.arange(9), (2, 1))}
    for d in mats:
        d.mkdir()
        (d / "agents.csv").write_text("")
    monkeypatch.setattr(figures, "read_agent_labels", lambda path: {0: mats[path.parent]})
    figs = []
    monkeypatch.setattr(figures, "save_fig", lambda fig, path: figs.append(fig))
    groups = runs.group_cells([small, large])
    assert figures.silo_sizes(tmp_path / "s.png", groups, [], Layout("k", "p"))
    legend = figs[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == labels
    assert [tuple(h.get_facecolor()) for h in legend.legend_handles] == [c[:3] + (0.85,) for c in colours]
    plots.plt.close(figs[0])
