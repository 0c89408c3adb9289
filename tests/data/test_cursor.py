"""The one resumable cursor that every batch loader keeps its position in."""

from __future__ import annotations

import pytest

from lmlab.data.cursor import Cursor
from lmlab.errors import LmlabError


def make(**identity):
    return Cursor("train", 3, rank=0, world_size=1, identity={"seed": 1, **identity}, empty="no batch")


def test_advances_through_epochs():
    c = make()
    assert [c.advance() for _ in range(7)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]


def test_state_round_trip_and_identity_check():
    a = make()
    for _ in range(4):
        a.advance()
    b = make()
    b.load_state_dict(a.state_dict())
    assert [b.advance() for _ in range(3)] == [a.advance() for _ in range(3)]
    with pytest.raises(LmlabError, match="seed was 1 and is now 2"):
        Cursor("train", 3, rank=0, world_size=1, identity={"seed": 2}, empty="").load_state_dict(a.state_dict())
    with pytest.raises(LmlabError, match="world_size was 1 and is now 2"):
        Cursor("train", 3, rank=0, world_size=2, identity={"seed": 1}, empty="").load_state_dict(a.state_dict())


def test_empty_epoch_and_bad_rank():
    with pytest.raises(LmlabError, match="^too small$"):
        Cursor("val", 0, rank=0, world_size=1, identity={}, empty="too small")
    with pytest.raises(ValueError):
        Cursor("val", 1, rank=2, world_size=2, identity={}, empty="")
