import torch

from tensorsim.core import graph, interact, rng


def brute_knn(x, k):
    # x: [n, d]; sort by (distance, index) with self excluded. Squared differences summed feature by
    # feature in float32, the documented arithmetic of every backend (graph.pairwise_sq_dist): a sum()
    # reduction may add in another order, one that depends on the CPU's vector width
    n = x.shape[0]
    d = torch.zeros(n, n)
    for f in range(x.shape[1]):
        d += (x[:, None, f] - x[None, :, f]).square()
    d.fill_diagonal_(float("inf"))
    out = []
    for i in range(n):
        out.append(sorted(range(n), key=lambda j: (d[i, j].item(), j))[:k])
    return torch.tensor(out)


def test_knn_matches_brute_force_and_excludes_self():
    x = torch.randn(3, 17, 5, generator=torch.Generator().manual_seed(0))  # the same data in every session
    nb = graph.knn_torch(x, 4, row_chunk=5, col_chunk=6)  # tiles smaller than n exercise the merge
    for b in range(3):
        assert torch.equal(nb[b], brute_knn(x[b], 4))
    assert not (nb == torch.arange(17)[None, :, None]).any()


def test_knn_ties_go_to_lower_index():
    # identical points: every other point is at distance 0, so neighbours are the lowest indices
    x = torch.zeros(1, 6, 3)
    nb = graph.knn_torch(x, 3, row_chunk=2, col_chunk=4)
    assert nb[0, 0].tolist() == [1, 2, 3]
    assert nb[0, 4].tolist() == [0, 1, 2]
    # a 1-D lattice: point 2 has 1 and 3 at equal distance -> 1 first
    x = torch.arange(5.0).reshape(1, 5, 1)
    assert graph.knn_torch(x, 2)[0, 2].tolist() == [1, 3]


def test_knn_rejects_bad_k():
    import pytest
    with pytest.raises(ValueError, match="k=5"):
        graph.knn_torch(torch.zeros(1, 5, 2), 5)


def test_partners_always_among_k_nearest_per_population():
    B, n = 4, 12
    nb = graph.knn_torch(torch.randn(B, n, 3), 6)
    k = torch.tensor([1, 2, 3, 6])
    seeds = rng.mix(0, torch.arange(B))
    for t in range(20):
        partner = interact.pick_partners(seeds, nb, k, t)
        for b in range(B):
            allowed = nb[b, :, : k[b]]
            assert (allowed == partner[b][:, None]).any(-1).all()
    # k=1 always copies the nearest
    assert torch.equal(interact.pick_partners(seeds, nb, torch.ones(B, dtype=torch.long), 0), nb[..., 0])


def test_partner_picks_are_uniform_over_the_k_nearest():
    nb = torch.arange(1, 4).expand(1, 3000, 3)  # every agent's neighbours are 1, 2, 3
    partner = interact.pick_partners(torch.tensor([7]), nb, torch.tensor([3]), 0)
    share = torch.bincount(partner.flatten(), minlength=4)[1:] / 3000
    assert (share - 1 / 3).abs().max() < 0.04


def test_mirror_coins_rates_and_extremes():
    seeds = rng.mix(1, torch.arange(3))
    p = torch.tensor([0.0, 0.3, 1.0])
    coins = torch.stack([interact.mirror_coins(seeds, p, t, 500) for t in range(4)])  # [T, B, n]
    assert not coins[:, 0].any() and coins[:, 2].all()
    assert abs(coins[:, 1].float().mean().item() - 0.3) < 0.03


def test_masked_update_takes_own_answer_where_mirrored():
    partner = torch.tensor([[2, 0, 1]])
    assert interact.context_sources(torch.tensor([[True, False, True]]), partner).tolist() == [[0, 0, 2]]
    assert interact.context_sources(torch.ones(1, 3, dtype=torch.bool), partner).tolist() == [[0, 1, 2]]


def test_counter_rng_is_batch_independent():
    # the draws of population seed s do not depend on which other seeds share the tensor
    a = rng.uniform(torch.tensor([5, 9])[:, None], rng.COIN, 3, torch.arange(4)[None])
    b = rng.uniform(torch.tensor([9])[:, None], rng.COIN, 3, torch.arange(4)[None])
    assert torch.equal(a[1], b[0])
    u = rng.uniform(1, torch.arange(200_000))
    assert abs(u.mean().item() - 0.5) < 0.005 and u.min() >= 0 and u.max() < 1
