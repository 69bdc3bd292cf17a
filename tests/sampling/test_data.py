import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import slt
import slt.sampling.data
from slt.sampling.data import (
    LoaderData,
    Partition,
    TensorData,
    as_data_source,
    batch_length,
    move_to,
    partition_copies,
)
from slt.warnings import DataWarning

CPU = torch.device("cpu")


@pytest.fixture
def one_partition(monkeypatch):
    """Batches from one partition (K batches), so tests can count them."""
    monkeypatch.setattr(slt.sampling.data, "MIN_BATCHES", 1)


def test_the_partition_holds_every_sample_in_balanced_weighted_batches(one_partition):
    x = torch.arange(103.0).unsqueeze(1)
    data = TensorData((x, x * 2), CPU)
    partition = data.partition(10)
    assert partition.num_batches == 11 and sorted(set(partition.sizes)) == [9, 10] and not partition.equal
    samples = torch.cat([partition.batch(k)[0] for k in range(11)]).squeeze(1)
    assert sorted(samples.tolist()) == list(range(103))  # nothing left out
    # weights |B_k| K / n make the mean over uniformly drawn batches the full-data mean
    means = torch.stack([partition.batch(k)[0].mean() for k in range(11)])
    assert float((partition.weights * means).mean()) == pytest.approx(float(x.mean()), rel=1e-6)
    stream = data.stream(torch.Generator().manual_seed(0), 10)
    counts = torch.zeros(11)
    for _ in range(2200):
        bx, by = stream()
        assert torch.equal(by, bx * 2) and stream.weight == partition.weight(stream.index)
        counts[stream.index] += 1
    assert counts.min() > 140 and counts.max() < 260  # uniform ids: 200 each on average
    assert data.partition(25).sizes == [21, 21, 21, 20, 20]
    equal = TensorData((torch.arange(100.0),), CPU).partition(30)
    assert equal.sizes == [25, 25, 25, 25] and equal.equal and torch.all(equal.weights == 1)


def test_batch_ids_are_drawn_independently_of_the_last_ones(one_partition):
    # a permutation per epoch made the batch about to be used one the chain had not yet fitted this
    # epoch; with independent draws the same batch follows itself as often as any other
    data = TensorData((torch.arange(40.0),), CPU)
    stream = data.stream(torch.Generator().manual_seed(1), 10)
    ids = []
    for _ in range(4000):
        stream()
        ids.append(stream.index)
    repeats = sum(a == b for a, b in itertools.pairwise(ids)) / (len(ids) - 1)
    assert repeats == pytest.approx(0.25, abs=0.03)


def test_batches_with_the_same_id_hold_the_same_samples_across_chains_and_runs():
    x = torch.randn(60, 3)
    data = TensorData((x,), CPU, partition_seed=4)
    a = data.stream(torch.Generator().manual_seed(0), 12)
    b = data.stream(torch.Generator().manual_seed(1), 12)
    first_a, first_b = a(), b()
    assert a.partition is b.partition
    assert torch.equal(a.batch(b.index)[0], first_b[0])
    assert torch.equal(data.partition(12).batch(a.index)[0], first_a[0])
    other = TensorData((x,), CPU, partition_seed=5)
    assert not torch.equal(other.partition(12).batch(0)[0], data.partition(12).batch(0)[0])


def test_stacked_stream_gives_each_chain_its_own_batches(one_partition):
    x = torch.arange(40.0).unsqueeze(1)
    stream = TensorData((x,), CPU).stacked_stream(torch.Generator().manual_seed(0), 8, num_chains=3)
    (batch,) = stream()
    assert batch.shape == (3, 8, 1)
    ids = stream.index
    assert ids.shape == (3,)
    for c in range(3):
        assert torch.equal(batch[c], stream.batch(int(ids[c]))[0])
    picks = [[], [], []]
    for _ in range(50):
        stream()
        for c in range(3):
            picks[c].append(int(stream.index[c]))
    assert all(set(p) == set(range(5)) for p in picks) and len({tuple(p) for p in picks}) == 3


def test_unequal_batches_are_stacked_by_size_class_and_each_chain_draws_every_batch_uniformly(one_partition):
    x = torch.arange(41.0)
    data = TensorData((x,), CPU)
    partition = data.partition(8)  # 6 batches: 5 of 7 samples, 1 of 6
    assert partition.sizes == [7, 7, 7, 7, 7, 6] and partition.num_large == 5
    stream = data.stacked_stream(torch.Generator().manual_seed(0), 8, num_chains=3)
    counts = torch.zeros(3, 6)
    for _ in range(3000):
        (batch,) = stream()
        ids = stream.index
        assert batch.shape[1] == partition.sizes[int(ids[0])]  # one size class per step
        for c in range(3):
            assert torch.equal(batch[c], stream.batch(int(ids[c]))[0])
        assert torch.equal(stream.weight, partition.weights[ids])
        counts[torch.arange(3), ids] += 1
    # each chain draws each batch with probability 1/6, so weighted batch losses stay unbiased
    assert torch.allclose(counts / 3000, torch.full((3, 6), 1 / 6), atol=0.025)
    with pytest.raises(ValueError, match="differ in size.*large=True or False"):
        partition.stacked(torch.tensor([0, 1]))


def test_batches_come_from_enough_independent_partitions_that_their_noise_is_not_one_draw():
    # 9 batches of one partition give the gradient noise of those 9 batches for the whole run (a normal
    # crossing's estimate moved by +14% with the seed of its partition); 15 partitions give 135 batches
    assert partition_copies(5000, 588, 40_000) == 15
    assert partition_copies(5000, 5000, 40_000) == 1 and partition_copies(5000, None, 40_000) == 1
    assert partition_copies(100_000, 256, 800_000) == 1  # 391 batches are already enough
    fits = slt.sampling.data.SHUFFLED_COPY_BYTES // 10**8
    assert partition_copies(5000, 588, 10**8) == fits  # no more shuffled copies than fit in memory
    assert partition_copies(5000, 588, 10**12) == 1
    x = torch.arange(103.0).unsqueeze(1)
    partition = TensorData((x, x * 2), CPU).partition(10)  # 11 batches of 9 or 10 per copy, 12 copies
    assert partition.copies == 12 and partition.num_batches == 132 and partition.num_large == 12 * 4
    assert partition.sizes == [10] * 48 + [9] * 84
    samples = torch.cat([partition.batch(k)[0] for k in range(132)]).squeeze(1)
    assert torch.equal(torch.bincount(samples.long()), torch.full((103,), 12))  # each sample in 12 batches
    for k in range(132):
        bx, by = partition.batch(k)
        assert torch.equal(by, bx * 2)
    means = torch.stack([partition.batch(k)[0].mean() for k in range(132)])
    assert float((partition.weights * means).mean()) == pytest.approx(float(x.mean()), rel=1e-6)
    # the copies are shuffled independently: the first copy's batches are not the second's
    first = {tuple(sorted(partition.batch(k)[0].squeeze(1).tolist())) for k in range(0, 4)}
    second = {tuple(sorted(partition.batch(k)[0].squeeze(1).tolist())) for k in range(4, 8)}
    assert first.isdisjoint(second)
    with pytest.raises(ValueError, match="copies must be a positive integer"):
        Partition((x,), 10, torch.Generator(), copies=0)


def test_full_batch_when_the_batch_is_as_large_as_the_data():
    x = torch.randn(7, 2)
    stream = TensorData((x,), CPU).stream(torch.Generator().manual_seed(0), 100)
    assert torch.equal(stream()[0], x) and stream.index == 0


def test_large_data_is_gathered_instead_of_copied(monkeypatch, one_partition):
    import slt.sampling.data

    monkeypatch.setattr(slt.sampling.data, "SHUFFLED_COPY_BYTES", 0)
    x = torch.arange(20.0).unsqueeze(1)
    data = TensorData((x,), CPU)
    partition = data.partition(5)
    assert partition._shuffled is None  # gathered through the permutation, not copied
    seen = torch.cat([partition.batch(k)[0] for k in range(4)]).squeeze(1)
    assert sorted(seen.tolist()) == list(range(20))
    stream = data.stream(torch.Generator().manual_seed(0), 5)
    for _ in range(6):
        (batch,) = stream()
        assert torch.equal(batch, partition.batch(stream.index)[0])
    stacked = data.stacked_stream(torch.Generator().manual_seed(0), 6, num_chains=2)  # sizes 5, 5, 5, 5
    unequal = data.stacked_stream(torch.Generator().manual_seed(0), 7, num_chains=2)  # sizes 7, 7, 6
    for stream in (stacked, unequal):
        for _ in range(10):
            (batch,) = stream()
            for c in range(2):
                assert torch.equal(batch[c], stream.batch(int(stream.index[c]))[0])


class Pairs(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor([2.0 * i])


def test_loader_data_covers_the_dataset_and_streams_forever():
    data = as_data_source(Pairs(10), CPU, batch_size=4)
    assert isinstance(data, LoaderData)
    assert sum(batch_length(b) for b in data.full_batches()) == 10
    stream = data.stream(torch.Generator().manual_seed(0), 4)
    sizes = [batch_length(stream()) for _ in range(7)]
    assert sizes == [4] * 7  # samples drawn independently: every batch full
    assert stream.index is None and stream.partition is None


def _sample_ids(stream, batches):
    return [[int(v) for v in stream()[0].flatten()] for _ in range(batches)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_loader_with_a_default_sampler_is_drawn_from_independently(shuffle):
    """In order, or one permutation per epoch, the batch about to be used is one the chain has not fitted
    this epoch, and the loss recorded there is biased (a regression at batch 32: +9.2% against +3.2%
    drawn independently, six seeds): draw samples independently instead, keeping the loader's batch
    size, and count every sample in L_n(w*) and n."""
    global_state = torch.get_rng_state()
    loader = DataLoader(Pairs(10), batch_size=4, shuffle=shuffle, drop_last=True)
    data = as_data_source(loader, CPU)
    assert sorted(int(v) for b in data.full_batches() for v in b[0].flatten()) == list(range(10))
    ids = _sample_ids(data.stream(torch.Generator().manual_seed(0), None), 500)
    assert all(len(batch) == 4 for batch in ids)
    counts = np.bincount(np.concatenate(ids), minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # 200 each on average
    # with replacement, a batch of 4 out of 10 repeats a sample with probability 0.496
    repeats = sum(len(set(batch)) < 4 for batch in ids) / len(ids)
    assert 0.4 < repeats < 0.6
    again = _sample_ids(data.stream(torch.Generator().manual_seed(0), None), 500)
    assert again == ids  # the chain's generator decides, not the global RNG
    assert torch.equal(torch.get_rng_state(), global_state)


def test_a_loader_with_its_own_sampler_is_read_as_configured():
    ordered = torch.utils.data.SubsetRandomSampler([1, 3, 5], generator=torch.Generator().manual_seed(0))
    loader = DataLoader(Pairs(10), batch_size=3, sampler=ordered)
    data = as_data_source(loader, CPU)
    assert sorted(int(v) for b in data.full_batches() for v in b[0].flatten()) == [1, 3, 5]
    stream = data.stream(torch.Generator().manual_seed(0), None)
    assert all(sorted(batch) == [1, 3, 5] for batch in _sample_ids(stream, 5))


def test_a_loader_resampling_with_replacement_is_flagged_and_the_flag_stays_on_the_result():
    x = torch.randn(100, 3)
    y = x @ torch.tensor([[1.0], [0.5], [-1.0]]) + 0.1 * torch.randn(100, 1)
    dataset = TensorDataset(x, y)
    resampled = DataLoader(dataset, batch_size=20, sampler=torch.utils.data.RandomSampler(dataset, True, 60))
    (problem,) = as_data_source(resampled, CPU).problems
    assert problem.category == "DataWarning"
    assert "draws 60 samples per pass from a dataset of 100" in problem.message
    assert "pass the dataset itself" in problem.message
    batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(dataset, True, 60), 20, False)
    (problem,) = as_data_source(DataLoader(dataset, batch_sampler=batches), CPU).problems  # its own batches
    assert "draws 60 samples per pass" in problem.message
    subset = DataLoader(dataset, batch_size=20, sampler=torch.utils.data.SubsetRandomSampler(range(50)))
    assert as_data_source(subset, CPU).problems == ()  # a subset without replacement means that subset
    assert as_data_source(DataLoader(dataset, batch_size=20, shuffle=True), CPU).problems == ()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = slt.estimate_llc(
            nn.Linear(3, 1),
            resampled,
            loss_fn="mse",
            step_size=1e-4,
            num_chains=2,
            num_draws=20,
            progress=False,
        )
    assert any(w.category is DataWarning and "draws 60 samples" in str(w.message) for w in caught)
    assert result.n == 60 and "DataWarning" in {p.category for p in result.problems}
    assert result.settings.batch_size == 20  # the loader's, recorded


def test_a_data_loader_subclass_is_read_as_it_makes_its_batches():
    class Scaled(DataLoader):  # a subclass may place or transform its batches
        def __iter__(self):
            for inputs, targets in super().__iter__():
                yield 100 * inputs, targets

    data = as_data_source(Scaled(Pairs(6), batch_size=3), CPU)
    assert sorted(int(v) for b in data.full_batches() for v in b[0].flatten()) == [0, 100, 200, 300, 400, 500]
    stream = data.stream(torch.Generator().manual_seed(0), None)
    assert [sorted(batch) for batch in _sample_ids(stream, 2)] == [[0, 100, 200], [300, 400, 500]]


def test_independent_draws_keep_the_loaders_worker_options():
    from slt.sampling.data import _independent_draws

    def collate(batch):
        return torch.utils.data.default_collate(batch)

    loader = DataLoader(
        Pairs(10), batch_size=4, shuffle=True, num_workers=2, collate_fn=collate, prefetch_factor=3,
        persistent_workers=True, in_order=False, pin_memory=False,
    )  # fmt: skip
    drawn = _independent_draws(loader, torch.Generator().manual_seed(0))  # built, never iterated
    assert drawn is not None and drawn.batch_size == 4 and drawn.collate_fn is collate
    assert (drawn.num_workers, drawn.prefetch_factor, drawn.persistent_workers) == (2, 3, True)
    assert drawn.in_order is False
    assert drawn.sampler.replacement and drawn.sampler.num_samples == 12


def test_data_loaders_keep_their_own_batch_size():
    loader = DataLoader(TensorDataset(torch.zeros(5, 1)), batch_size=2)
    with pytest.raises(ValueError, match="a DataLoader keeps its own batch size"):
        as_data_source(loader, CPU, batch_size=3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ((), "data is empty \\(no tensors\\)"),
        ((torch.zeros(3, 1), torch.zeros(4, 1)), "disagree on the number of samples"),
        ((torch.tensor(1.0),), "leading sample dimension"),
        ((torch.zeros(0, 2),), "data is empty"),
    ],
)
def test_bad_tensor_data_is_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        as_data_source(data, CPU)


def test_unsupported_data_and_batch_size_are_rejected():
    with pytest.raises(TypeError, match="data must be a tuple of tensors"):
        as_data_source("x", CPU)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        as_data_source((torch.zeros(3, 1),), CPU, batch_size=0)


def test_move_to_handles_nested_batches():
    batch = {"x": torch.zeros(2), "pair": (torch.ones(1), [torch.ones(3)]), "tag": "keep"}
    moved = move_to(batch, CPU)
    assert moved["tag"] == "keep" and moved["pair"][1][0].shape == (3,)
    assert batch_length(moved) == 2


def test_a_dict_of_tensors_gives_dict_batches_with_its_keys():
    ids = torch.arange(24).reshape(12, 2)
    data = as_data_source({"input_ids": ids, "labels": ids + 100}, CPU)
    (batch,) = list(data.full_batches())
    assert isinstance(batch, dict) and torch.equal(batch["labels"], ids + 100)
    stream = data.stacked_stream(torch.Generator().manual_seed(0), 4, num_chains=2)
    stacked = stream()
    assert stacked["input_ids"].shape == (2, 4, 2)
    assert torch.equal(stacked["labels"], stacked["input_ids"] + 100)  # rows stay together
    with pytest.raises(TypeError, match=r"data\['input_ids'\] is a list .*return_tensors=\"pt\""):
        as_data_source({"input_ids": [[1, 2], [3, 4]]}, CPU)


def test_float_data_takes_the_models_dtype_and_integer_data_keeps_its_own():
    x, y = torch.randn(6, 2), torch.arange(6)
    data = as_data_source((x, y), CPU, dtype=torch.float64)
    assert data.tensors[0].dtype == torch.float64 and data.tensors[1].dtype == torch.int64
    loader = as_data_source(DataLoader(TensorDataset(x, y), batch_size=3), CPU, dtype=torch.float64)
    batch = loader.stream(torch.Generator().manual_seed(0), None)()
    assert batch[0].dtype == torch.float64 and batch[1].dtype == torch.int64


class Counting(IterableDataset):
    """The integers 0, 1, 2, ... (endless) or up to ``stop``."""

    def __init__(self, stop=None):
        self.stop = stop

    def __iter__(self):
        i = 0
        while self.stop is None or i < self.stop:
            yield torch.tensor([float(i)])
            i += 1


def test_a_stream_is_read_in_order_and_evaluated_on_its_first_samples_only():
    data = as_data_source(Counting(), CPU, eval_samples=10)
    assert data.bounded
    seen = torch.cat(list(data.full_batches()))
    assert torch.equal(seen.flatten(), torch.arange(10.0))  # exactly the first 10 of an endless stream
    stream = data.stream(torch.Generator().manual_seed(0), 4)
    assert torch.equal(stream().flatten(), torch.arange(4.0))
    assert torch.equal(stream().flatten(), torch.arange(4.0, 8.0))
    finite = as_data_source(Counting(stop=6), CPU).stream(torch.Generator(), 4)
    assert [len(finite()) for _ in range(3)] == [4, 2, 4]  # a finite stream starts over


def test_a_stream_without_n_is_refused_with_the_remedy():
    from slt.sampling import PosteriorSampler

    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match=r"data is a stream .*Pass n=.*eval_samples=1024"):
        PosteriorSampler(model, Counting(), lambda m, b: m(b).pow(2).mean())
    sampler = PosteriorSampler(model, Counting(), lambda m, b: m(b).pow(2).mean(), n=500, eval_samples=8)
    assert sampler.n == 500 and sampler.num_samples == 8


def test_the_full_data_loss_is_evaluated_in_slices_of_a_few_minibatches():
    x = torch.arange(5000.0).reshape(-1, 1)
    data = as_data_source((x,), torch.device("cpu"), batch_size=32)
    slices = list(data.full_batches())
    assert [len(s[0]) for s in slices[:2]] == [256, 256]  # 8 minibatches of 32
    assert torch.equal(torch.cat([s[0] for s in slices]), x)
    default = as_data_source((x,), torch.device("cpu"))
    assert len(next(iter(default.full_batches()))[0]) == 2048  # the default batch is 256
