"""Property tests of the metrics and the update (hypothesis)."""
import math

import torch
from hypothesis import given, settings, strategies as st

from tensorsim.core import interact, metrics, rng

labels_st = st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-1, 9), min_size=n, max_size=n), st.lists(st.integers(-1, 9), min_size=n, max_size=n)))


@settings(max_examples=200, deadline=None)
@given(labels_st, st.randoms(use_true_random=False))
def test_metric_bounds_and_invariances(pair, rand):
    prev, cur = (torch.tensor([x]) for x in pair)
    n = cur.shape[1]
    s = metrics.stability(prev, cur).item()
    e = metrics.entropy(cur, 10).item()
    k = metrics.n_silos(cur, 10).item()
    assert 0 <= s <= 1 and 0 <= e <= math.log(n) + 1e-12 and 1 <= k <= n
    # relabelling silos (a permutation of label ids, -1 included) changes nothing
    perm = list(range(-1, 10))
    rand.shuffle(perm)
    relabel = torch.tensor(perm)[cur + 1], torch.tensor(perm)[prev + 1]
    assert abs(metrics.entropy(relabel[0], 10).item() - e) < 1e-12  # sums in another order
    assert metrics.n_silos(relabel[0], 10).item() == k
    assert metrics.stability(relabel[1], relabel[0]).item() == s
    # permuting agents changes nothing either
    order = torch.tensor(rand.sample(range(n), n))
    assert abs(metrics.entropy(cur[:, order], 10).item() - e) < 1e-12
    assert metrics.stability(prev[:, order], cur[:, order]).item() == s


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 30), st.integers(1, 4), st.floats(0, 1), st.integers(0, 10_000), st.integers(0, 100))
def test_update_takes_an_answer_of_this_step_and_mirrors_keep_their_own(n, B, p, seed, t):
    k = torch.randint(1, n, (B,), generator=torch.Generator().manual_seed(seed))
    seeds = rng.mix(seed, torch.arange(B))
    emb = torch.randn(B, n, 3, generator=torch.Generator().manual_seed(seed))
    from tensorsim.core.graph import knn_torch
    nb = knn_torch(emb, int(k.max()))
    mirrored = interact.mirror_coins(seeds, torch.full((B,), p), t, n)
    partner = interact.pick_partners(seeds, nb, k, t)
    src = interact.context_sources(mirrored, partner)
    own = torch.arange(n).expand(B, n)
    assert ((src >= 0) & (src < n)).all()  # an answer of this step, from the same population
    assert torch.equal(src[mirrored], own[mirrored])
    assert (src[~mirrored] != own[~mirrored]).all()
    for b in range(B):
        allowed = nb[b, :, : k[b]]
        assert (allowed == src[b][:, None]).any(-1)[~mirrored[b]].all()
