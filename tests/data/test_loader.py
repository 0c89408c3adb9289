from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab.data.dataset import load_dataset
from lmlab.data.loader import BatchLoader
from lmlab.errors import LmlabError


@pytest.fixture
def tokens():
    return np.arange(10_000, dtype=np.uint16)  # token value = its position, so windows are easy to check


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_targets_are_inputs_shifted_and_windows_contiguous(tokens):
    x, y = next(BatchLoader(tokens, 4, 16, seed=0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))  # consecutive positions


def test_same_seed_same_stream_other_seed_other_stream(tokens):
    a = take(BatchLoader(tokens, 4, 16, seed=3), 20)
    b = take(BatchLoader(tokens, 4, 16, seed=3), 20)
    c = take(BatchLoader(tokens, 4, 16, seed=4), 20)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_epoch_visits_each_window_once(tokens):
    loader = BatchLoader(tokens, 8, 16, seed=1)
    starts = torch.cat([x[:, 0] for x, _ in take(loader, loader.batches_per_epoch)])
    assert len(set(starts.tolist())) == len(starts)
    offsets = {s % 16 for s in starts.tolist()}
    assert len(offsets) == 1  # one random offset per epoch, windows do not overlap


def test_cursor_restores_exactly_across_epochs(tokens):
    loader = BatchLoader(tokens, 8, 16, seed=5)
    n = loader.batches_per_epoch + 7  # cross an epoch boundary before saving
    take(loader, n)
    state = loader.state_dict()
    expected = take(loader, 2 * loader.batches_per_epoch)
    fresh = BatchLoader(tokens, 8, 16, seed=5)
    fresh.load_state_dict(state)
    got = take(fresh, 2 * loader.batches_per_epoch)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(expected, got))


def test_ranks_read_disjoint_windows_of_equal_count(tokens):
    per_rank = []
    for rank in range(3):
        loader = BatchLoader(tokens, 4, 16, seed=9, rank=rank, world_size=3)
        per_rank.append(torch.cat([x[:, 0] for x, _ in take(loader, loader.batches_per_epoch)]).tolist())
    assert len({len(s) for s in per_rank}) == 1
    flat = [s for r in per_rank for s in r]
    assert len(flat) == len(set(flat))


def test_sequential_mode_starts_at_the_beginning(tokens):
    x, _ = next(BatchLoader(tokens, 2, 16, shuffle=False))
    assert x[:, 0].tolist() == [0, 16]


def test_batch_larger_than_data_is_refused():
    with pytest.raises(LmlabError, match="fewer than one batch of 64 windows of block_size\\+1 = 257 tokens"):
        BatchLoader(np.arange(1000, dtype=np.uint16), 64, 256, name="val")


def test_restore_with_other_settings_is_refused(tokens):
    state = BatchLoader(tokens, 8, 16, seed=5).state_dict()
    with pytest.raises(LmlabError, match="batch_size was 8 and is now 4"):
        BatchLoader(tokens, 4, 16, seed=5).load_state_dict(state)


def test_dataset_reads_prepared_shards(shakespeare_char):
    ds = load_dataset(shakespeare_char)
    train = ds.tokens("train")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert len(train) == ds.meta["splits"]["train"]["tokens"]
    x, y = next(BatchLoader(train, 2, 32, seed=0))
    assert int(x.max()) < ds.vocab_size


def test_dataset_errors(tmp_path, shakespeare_char):
    with pytest.raises(LmlabError, match="not found; create it with: lmlab prepare"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmlabError, match="not an lmlab dataset"):
        load_dataset(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("meta.json", "tokenizer.json"):
        (broken / name).write_bytes((shakespeare_char / name).read_bytes())
    (broken / "train.bin").write_bytes((shakespeare_char / "train.bin").read_bytes()[:1000])
    with pytest.raises(LmlabError, match="the dataset is damaged"):
        load_dataset(broken).tokens("train")
