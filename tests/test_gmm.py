"""Gaussian-mixture proxy agents (docs/SPEC.md §2) against a plain per-agent numpy reference.

The reference below is written from docs/SPEC.md §2 alone: one agent at a time (Python loops over agents,
points and slots); the only vectorisation is a leading axis of independent populations run in lockstep
(which changes nothing inside a population) and the per-component arithmetic of one point.
"""
import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from hydra import compose, initialize_config_dir

from tensorsim.agents import gmm, gmm_neighbours
from tensorsim.agents.gmm import GMMAgents
from tensorsim.core import interact, rng
from tensorsim.core.populations import build_populations

EPS = 1e-12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small (a few MB): on a shared 2-core machine OpenMP's second thread costs far more
    in synchronisation than it saves (4x slower under load), so the module runs torch single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ reference
def ref_means(C, D):
    L = 1
    while L**D < C:
        L += 1
    return np.array([[(c // L**d) % L for d in range(D)] for c in range(C)], dtype=np.float64)


def ref_initial_weights(n, C, eps=EPS):
    """Agent i: one-hot on i mod C, clipped to [eps, 1-eps], renormalised (normaliser (1-eps)+(C-1)eps)."""
    z = (1 - eps) + (C - 1) * eps
    w = np.empty((n, C))
    for i in range(n):
        for c in range(C):
            w[i, c] = ((1 - eps) if c == i % C else eps) / z
    return w


def ref_sample(w, means, var, u, z):
    """w [S, C], u [S], z [S, D] -> [S, D]: component = first c with cumsum_c > u * total."""
    S, C = w.shape
    cw = np.cumsum(w, -1)
    c = np.minimum((cw <= (u * cw[:, -1])[:, None]).sum(-1), C - 1)
    rows = np.arange(S)
    mu = means[c] if means.ndim == 2 else means[rows, c]
    sd = math.sqrt(var) if np.isscalar(var) else np.sqrt(var[rows, c])[:, None]
    return mu + sd * z


def ref_replace_farthest(rag, x):
    """rag [S, m, D], x [S, D] -> copy with the farthest point (first on ties) replaced by x."""
    rag = rag.copy()
    S, m, D = rag.shape
    best, best_d = np.zeros(S, dtype=np.int64), np.full(S, -1.0)
    for slot in range(m):
        d = np.zeros(S)
        for e in range(D):
            d += (rag[:, slot, e] - x[:, e]) ** 2
        better = d > best_d
        best, best_d = np.where(better, slot, best), np.where(better, d, best_d)
    rag[np.arange(S), best] = x
    return rag


def ref_em(w, X, means, var, eps=EPS, update_means=False, update_variances=False, min_mass=1e-6,
           var_floor=1e-4):
    """One EM step: w [S, C], X [S, m, D], means [C, D] or [S, C, D], var float or [S, C]."""
    S, m, D = X.shape
    C = w.shape[-1]
    mu = np.broadcast_to(means, (S, C, D))
    sq = np.zeros((S, m, C))
    for d in range(D):
        sq += (X[:, :, None, d] - mu[:, None, :, d]) ** 2
    if np.isscalar(var):
        logp = np.log(w)[:, None] - sq / (2 * var)
    else:
        logp = np.log(w)[:, None] - sq / (2 * var[:, None]) - 0.5 * D * np.log(2 * math.pi * var[:, None])
    e = np.exp(logp - logp.max(-1, keepdims=True))  # log-sum-exp: responsibilities of each point
    G = e / e.sum(-1, keepdims=True)  # [S, m, C]
    w_new = np.clip(G.mean(1), eps, 1 - eps)
    w_new = w_new / np.sort(w_new, -1).sum(-1, keepdims=True)  # order-free normaliser (see gmm.normalise)
    mass = G.sum(1)  # [S, C]
    used = mass >= min_mass
    means_new, var_new = means, var
    if update_means:
        est = np.einsum("smc,smd->scd", G, X) / np.where(used, mass, 1)[..., None]
        means_new = np.where(used[..., None], est, mu)
    if update_variances:
        mu2 = np.broadcast_to(means_new, (S, C, D))
        sq = ((X[:, :, None, :] - mu2[:, None]) ** 2).sum(-1)  # [S, m, C]
        est = np.maximum((G * sq).sum(1) / (D * np.where(used, mass, 1)), var_floor)
        var_new = np.where(used, est, np.broadcast_to(var, (S, C)))
    return w_new, means_new, var_new


def ref_neighbours(w, i, k):
    """w [S, n, C] -> [S, k] the k nearest j != i by ||w_i - w_j||, ties to the lower j."""
    S, n, _ = w.shape
    d = np.zeros((S, n))
    for f in range(w.shape[-1]):  # squared distance to every j, summed in feature order
        d += (w[:, i, None, f] - w[:, :, f]) ** 2
    d[:, i] = np.inf
    return np.argsort(d, axis=-1, kind="stable")[:, :k]


def ref_step(w, rag, src, uq, zq, ua, za, means, var, eps=EPS):
    """docs/SPEC.md §2 steps 2-4 for every agent, one at a time, from the old state. src [S, n] = j of each i."""
    S, n, _ = w.shape
    rows = np.arange(S)
    w_new, rag_new = w.copy(), rag.copy()
    for i in range(n):
        j = src[:, i]
        x = ref_sample(w[:, i], means, var, uq[:, i], zq[:, i])
        rag_j = ref_replace_farthest(rag[rows, j], x)
        w1, _, _ = ref_em(w[rows, j], rag_j, means, var, eps)
        y = ref_sample(w1, means, var, ua[:, i], za[:, i])
        rag_new[:, i] = ref_replace_farthest(rag[:, i], y)
        w_new[:, i] = ref_em(w[:, i], rag_new[:, i], means, var, eps)[0]
    return w_new, rag_new


def ref_run(n, T, k, p, S, seed, C=None, m=5, sigma=0.2):
    """S independent populations with numpy's own RNG -> final number of silos of each."""
    C = C or n
    g = np.random.default_rng(seed)
    means, var = ref_means(C, 1), sigma**2
    w = np.broadcast_to(ref_initial_weights(n, C), (S, n, C)).copy()
    rag = np.empty((S, n, m, 1))
    for i in range(n):
        for slot in range(m):
            rag[:, i, slot] = ref_sample(w[:, i], means, var, g.random(S), g.standard_normal((S, 1)))
    for _ in range(T):
        mirrored = g.random((S, n)) < p
        src = np.empty((S, n), dtype=np.int64)
        for i in range(n):
            partner = ref_neighbours(w, i, k)[np.arange(S), g.integers(k, size=S)]
            src[:, i] = np.where(mirrored[:, i], i, partner)
        uq, ua = g.random((S, n)), g.random((S, n))
        zq, za = g.standard_normal((S, n, 1)), g.standard_normal((S, n, 1))
        w, rag = ref_step(w, rag, src, uq, zq, ua, za, means, var)
    return np.array([len(set(row)) for row in w.argmax(-1).tolist()])


# ------------------------------------------------------------------------------------------ helpers
def make_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["agents=gmm", *overrides])


def engine(*overrides):
    cfg = make_cfg(*overrides)
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed)
    return GMMAgents(cfg, pops, torch.device("cpu")), pops


def final_silos(agents, T):
    for t in range(T):
        rec = agents.step(t)
    return np.array([len(set(row)) for row in rec.labels.tolist()])


def t64(a):
    return torch.from_numpy(np.array(a))


# ------------------------------------------------------------------------------------------ (a) pieces
def test_initial_state_and_means():
    w = gmm.initial_weights(7, 3, EPS)
    assert torch.equal(w, t64(ref_initial_weights(7, 3)))
    assert torch.equal(gmm.labels_of(w), torch.arange(7) % 3)
    assert torch.allclose(w.sum(-1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(gmm.component_means(30, 1).flatten(), torch.arange(30.0, dtype=torch.float64))
    for C, D in [(30, 2), (27, 3), (5, 4)]:
        mu = gmm.component_means(C, D)
        assert torch.equal(mu, t64(ref_means(C, D)))
        assert len({tuple(r) for r in mu.tolist()}) == C  # distinct lattice points


@pytest.mark.parametrize("D,um,uv", [(1, False, False), (2, False, False), (1, True, True), (3, True, False),
                                     (2, False, True)])
def test_em_step_matches_reference(D, um, uv):
    g = np.random.default_rng(D * 10 + um * 2 + uv)
    S, m, C = 40, 5, 9
    w = g.dirichlet(np.full(C, 0.3), S)
    w = np.clip(w, EPS, 1 - EPS)
    w /= w.sum(-1, keepdims=True)
    X = g.normal(0, 2, (S, m, D)) + 3
    means = ref_means(C, D) if not um else ref_means(C, D) + g.normal(0, 0.1, (S, C, D))
    var = 0.04 if not uv else g.uniform(0.01, 0.1, (S, C))
    ref = ref_em(w, X, means, var, update_means=um, update_variances=uv)
    got = gmm.em_step(t64(w), t64(X), t64(means), var if np.isscalar(var) else t64(var), EPS,
                      update_means=um, update_variances=uv)
    np.testing.assert_allclose(got[0].numpy(), ref[0], rtol=1e-11, atol=0)
    if um:
        np.testing.assert_allclose(got[1].numpy(), ref[1], rtol=1e-11, atol=1e-14)
    if uv:
        np.testing.assert_allclose(got[2].numpy(), ref[2], rtol=1e-11, atol=1e-14)
    assert torch.allclose(got[0].sum(-1), torch.ones(S, dtype=torch.float64))
    assert (got[0] >= EPS * 0.99).all()


def test_em_step_is_stable_far_from_every_component():
    # points 50 sigma from every mean: naive exp underflows to 0/0, log space does not
    w = gmm.initial_weights(3, 3, EPS)
    X = torch.full((3, 5, 1), 40.0, dtype=torch.float64)
    new, _, _ = gmm.em_step(w, X, gmm.component_means(3, 1), 0.04, EPS)
    assert torch.isfinite(new).all()
    assert torch.equal(gmm.labels_of(new), torch.full((3,), 2))  # the nearest component takes the points


def test_sampling_and_farthest_point_match_reference():
    g = np.random.default_rng(1)
    S, C, m, D = 200, 7, 5, 2
    w = g.dirichlet(np.full(C, 0.5), S)
    means = ref_means(C, D)
    u, z = g.random(S), g.standard_normal((S, D))
    u[:3] = [1e-17, 1 - 1e-16, 0.5]
    x = gmm.sample_mixture(t64(w), t64(means), 0.04, t64(u), t64(z))
    assert torch.equal(x, t64(ref_sample(w, means, 0.04, u, z)))
    var = g.uniform(0.01, 0.1, (S, C))
    x2 = gmm.sample_mixture(t64(w), t64(np.broadcast_to(means, (S, C, D))), t64(var), t64(u), t64(z))
    np.testing.assert_array_equal(x2.numpy(), ref_sample(w, np.broadcast_to(means, (S, C, D)), var, u, z))
    rag = g.normal(size=(S, m, D)).round(1)  # rounding makes equal distances (ties) common
    rag[0] = [[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]]  # four points at distance 1 from the origin
    x = np.round(g.normal(size=(S, D)), 1)
    x[0] = 0
    got = gmm.replace_farthest(t64(rag), t64(x))
    assert torch.equal(got, t64(ref_replace_farthest(rag, x)))
    assert got[0, 0].tolist() == [0, 0] and got[0, 1].tolist() == [-1, 0]  # ties -> the lower slot


def test_neighbours_match_reference_including_ties():
    g = np.random.default_rng(2)
    S, n, C, k = 5, 30, 30, 6
    w = g.dirichlet(np.full(C, 0.2), (S, n))
    w_tie = np.broadcast_to(ref_initial_weights(n, 10), (1, n, 10))  # agents i, i+10, i+20 identical
    w_eq = ref_initial_weights(n, n)[None]  # every pair at the same distance
    for arr in (w, w_tie, w_eq):
        ref = np.stack([ref_neighbours(arr, i, k) for i in range(n)], 1)
        assert torch.equal(gmm_neighbours.knn_brute(t64(arr), k), t64(ref))
        assert torch.equal(gmm_neighbours.knn_pruned(t64(arr), k, leaf_size=8), t64(ref))
    assert gmm_neighbours.knn_pruned(t64(w_eq), 3)[0, 0].tolist() == [1, 2, 3]


def test_pruned_knn_is_exact_on_clustered_and_tied_points():
    torch.manual_seed(0)

    def brute(x, k):
        n = x.shape[1]
        ex = gmm_neighbours.sqdist(x[:, :, None, :], x[:, None, :, :]).masked_fill(torch.eye(n, dtype=torch.bool), math.inf)
        return torch.sort(ex, dim=-1, stable=True).indices[..., :k]

    for trial in range(6):
        n, d, k = [(300, 5, 7), (400, 30, 10), (200, 3, 1)][trial % 3]
        x = torch.rand(2, n, d, dtype=torch.float64)
        if trial % 4 == 0:
            x = (x * 3).round() / 3  # massive exact ties
        elif trial % 4 == 1:
            x = torch.softmax(torch.randn(2, n, d, dtype=torch.float64) * 15, -1)  # near one-hot, like GMM weights
        got = gmm_neighbours.knn_pruned(x, k, argmax_groups=trial % 2 == 1, leaf_size=[32, 64, 1000][trial % 3],
                             margin=trial % 3)
        assert torch.equal(got, brute(x, k)), trial


def test_one_engine_step_matches_reference_with_the_same_draws():
    """Coins, partner uniforms and mixture draws come from tensorsim.core.rng; everything else is the reference."""
    for over in (["trial.n=12", "trial.k=3", "trial.p=0.3", "trial.replicas=3"],
                 ["trial.n=14", "trial.k=4", "trial.p=0.0", "trial.replicas=2", "agents.components=5"]):
        ag, pops = engine(*over)
        n, S = ag.n, pops.B
        means, var = ref_means(ag.C, 1), 0.2**2
        seeds = pops.seeds
        agent = torch.arange(n)[None, :]
        for t in range(4):
            w, rag = ag.w.numpy().copy(), ag.rag.numpy().copy()
            mirrored = interact.mirror_coins(seeds, pops.p, t, n).numpy()
            u_pick = rng.uniform(seeds[:, None], rng.PARTNER, t, agent).numpy()
            k = pops.k.numpy()
            src = np.empty((S, n), dtype=np.int64)
            for i in range(n):
                nb = ref_neighbours(w, i, int(k.max()))
                slot = np.minimum((u_pick[:, i] * k).astype(np.int64), k - 1)
                src[:, i] = np.where(mirrored[:, i], i, nb[np.arange(S), slot])
            uq = rng.uniform64(seeds[:, None], rng.GMM_PICK, t, agent, 0).numpy()
            ua = rng.uniform64(seeds[:, None], rng.GMM_PICK, t, agent, 1).numpy()
            zq = rng.normal(seeds[:, None, None], rng.GMM_QUERY, t, agent[..., None], torch.arange(1)).numpy()
            za = rng.normal(seeds[:, None, None], rng.GMM_ANSWER, t, agent[..., None], torch.arange(1)).numpy()
            w_ref, rag_ref = ref_step(w, rag, src, uq, zq, ua, za, means, var)
            rec = ag.step(t)
            assert torch.equal(rec.partner, t64(src))
            assert torch.equal(rec.mirrored, t64(mirrored))
            np.testing.assert_allclose(ag.w.numpy(), w_ref, rtol=1e-10, atol=0)
            np.testing.assert_array_equal(ag.rag.numpy(), rag_ref)
            assert torch.equal(rec.labels, t64(w_ref.argmax(-1)))
            assert rec.contexts is None and rec.responses is None


def test_initial_rag_draws_from_own_mixture():
    ag, pops = engine("trial.n=10", "trial.replicas=4", "agents.components=4", "agents.rag_size=50")
    assert ag.rag.shape == (4, 10, 50, 1)
    # every point is near its agent's one-hot component (i mod 4): 6 sigma covers all draws
    assert ((ag.rag[..., 0] - (torch.arange(10) % 4)[None, :, None]).abs() < 1.2).all()
    assert not torch.equal(ag.rag[0], ag.rag[1])  # populations have their own seeds


def test_variants_run():
    ag, _ = engine("trial.n=9", "trial.k=2", "trial.replicas=2", "agents.dim=2", "agents.update_means=true",
                   "agents.update_variances=true")
    for t in range(5):
        rec = ag.step(t)
    assert ag.means.shape == (2, 9, 9, 2) and ag.var.shape == (2, 9, 9)
    assert torch.isfinite(ag.w).all() and torch.isfinite(ag.means).all() and (ag.var >= 1e-4).all()
    assert rec.labels.shape == (2, 9)


# ------------------------------------------------------------------------------------------ (b) statistics
@pytest.mark.parametrize("k,p", [(2, 0.0), (5, 0.5)])
def test_final_silos_agree_with_reference_in_distribution(k, p):
    S, n, T = 80, 30, 80
    ref = ref_run(n, T, k, p, S, seed=2024 + k)
    ag, _ = engine(f"trial.n={n}", f"trial.k={k}", f"trial.p={p}", f"trial.replicas={S}", "seed=7")
    got = final_silos(ag, T)
    se = math.sqrt(ref.var(ddof=1) / S + got.var(ddof=1) / S)
    assert abs(ref.mean() - got.mean()) <= 2 * se, (ref.mean(), got.mean(), se)


# ------------------------------------------------------------------------------------------ (c) the paper
def test_paper_silo_counts_at_p0():
    ag, pops = engine("trial.n=30", "trial.steps=80", "trial.p=0", "trial.k=[1,20,25]", "trial.replicas=50")
    silos = final_silos(ag, 80)
    cell = pops.cell.numpy()
    assert 6.0 <= silos[cell == 0].mean() <= 8.0  # docs/SPEC.md: about 7.4 at k = 1
    assert (silos[cell >= 1] == 1).all()  # one silo for k >= 20


# ------------------------------------------------------------------------------------------ (d) the CLI
def test_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = run_cli("agents=gmm", "trial=smoke", f"hydra.run.dir={out}", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("metrics.csv", "agents.csv", "summary.json"):
        assert (out / name).is_file()
    rows = list(csv.DictReader(open(out / "agents.csv")))
    assert len(rows) == 6 * 3
    assert all(r["label_name"] == r["label"] for r in rows)
    assert [r["label"] for r in rows[:6]] == [str(i) for i in range(6)] or rows[0]["t"] == "0"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"] == {"agents": "gmm"} and summary["complete"]
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 3


def test_proxy_trials_select_gmm_agents_and_their_components():
    # a trial file can set agents.* only when the trial group comes after agents in config.yaml's defaults
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["trial=proxy_large"])
        assert cfg.agents.kind == "gmm" and cfg.agents.components == 30 and cfg.trial.n == 100_000
        assert not cfg.output.agents and not cfg.output.transcript
        assert compose("config", overrides=["trial=proxy_large", "agents.components=40"]).agents.components == 40
        cfg = compose("config", overrides=["trial=proxy_grid"])
    assert cfg.agents.kind == "gmm" and list(cfg.trial.k) == [1, 3, 5, 10, 15, 20, 25] and cfg.trial.p == 0


# ------------------------------------------------------------------------------------------ (e) batches
def test_population_is_independent_of_its_batch():
    alone, _ = engine("trial.n=20", "trial.k=5", "trial.p=0.5", "trial.replicas=3")
    packed, pops = engine("trial.n=20", "trial.k=[1,5,15]", "trial.p=[0.0,0.5]", "trial.replicas=3")
    rows = ((pops.k == 5) & (pops.p == 0.5)).nonzero().flatten()
    for t in range(15):
        a, b = alone.step(t), packed.step(t)
        assert torch.equal(a.labels, b.labels[rows]) and torch.equal(a.partner, b.partner[rows])
    assert torch.equal(alone.w, packed.w[rows]) and torch.equal(alone.rag, packed.rag[rows])


def test_pruned_and_brute_neighbours_give_the_same_run():
    a, _ = engine("trial.n=300", "trial.k=4", "trial.p=0.2", "agents.components=30", "agents.knn=brute")
    b, _ = engine("trial.n=300", "trial.k=4", "trial.p=0.2", "agents.components=30", "agents.knn=pruned",
                  "agents.leaf_size=40")
    for t in range(6):
        ra, rb = a.step(t), b.step(t)
        assert torch.equal(ra.partner, rb.partner) and torch.equal(ra.labels, rb.labels)
    assert torch.equal(a.w, b.w)


def test_state_dict_resumes_the_same_run():
    over = ("trial.n=15", "trial.k=3", "trial.p=0.4", "trial.replicas=2", "agents.update_means=true",
            "agents.update_variances=true")
    a, _ = engine(*over)
    for t in range(6):
        ra = a.step(t)
    b, _ = engine(*over)
    for t in range(3):
        b.step(t)
    c, _ = engine(*over)
    c.load_state_dict(b.state_dict())
    for t in range(3, 6):
        rc = c.step(t)
    assert torch.equal(ra.labels, rc.labels) and torch.equal(a.w, c.w) and torch.equal(a.means, c.means)
