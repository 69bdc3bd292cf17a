import math

import torch

from slt.samplers import exchange


def test_swaps_are_accepted_with_the_metropolis_probability():
    x = torch.tensor([1.0, 3.0], dtype=torch.float64)
    # the colder rung holds the lower loss (as it should): swapping costs exp(-(3 - 1) * (0.5 - 0.2))
    loss = torch.tensor([[0.5] * 20000, [0.2] * 20000], dtype=torch.float64)
    source, accepted = exchange.neighbour_swaps(loss, x, torch.Generator().manual_seed(0), parity=0)
    expected = math.exp(-2 * 0.3)
    assert abs(accepted.double().mean().item() - expected) < 0.01
    assert torch.equal(source[0], torch.where(accepted[0], 1, 0))
    assert torch.equal(source[1], torch.where(accepted[0], 0, 1))
    # the other way round the swap always happens
    _, always = exchange.neighbour_swaps(loss.flip(0), x, None, parity=0)
    assert bool(always.all())


def test_parity_picks_disjoint_pairs_and_moves_whole_states():
    x = torch.arange(5, dtype=torch.float64)
    # colder rungs hold higher losses: every swap is favourable
    loss = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    source, accepted = exchange.neighbour_swaps(loss, x, None, parity=1)
    assert source[:, 0].tolist() == [0, 2, 1, 4, 3]
    assert accepted[:, 0].tolist() == [False, True, False, True]
    values = torch.arange(10.0).reshape(5, 1, 2)
    moved = exchange.apply_permutation(values, source)
    assert torch.equal(moved[1, 0], values[2, 0]) and torch.equal(moved[2, 0], values[1, 0])
    assert torch.equal(moved[0], values[0])


def test_round_trips_count_hot_cold_hot_journeys():
    rungs = 3
    replica = torch.arange(rungs).unsqueeze(-1)  # one column: replica k at rung k
    label = torch.zeros(rungs, 1, dtype=torch.long)
    trips = torch.zeros(1, dtype=torch.long)
    label, trips = exchange.count_round_trips(replica, label, trips)
    # replica 0 walks to the cold end and back; the others shift to make room
    for order in ([1, 0, 2], [1, 2, 0], [0, 2, 1], [2, 0, 1], [0, 2, 1]):
        label, trips = exchange.count_round_trips(torch.tensor(order).unsqueeze(-1), label, trips)
    # replica 0: hot -> cold (step 2) -> hot (step 3): one trip; replica 2 went cold -> hot without
    # having started hot, replica 1 never reached the cold end first
    assert trips.tolist() == [1]
