"""The encoder–decoder: masking, padding, caching, decoding, and that it learns."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig, get_preset
from lmlab.generation.beam import beam_search, greedy_search
from lmlab.generation.translation import translate_ids
from lmlab.models import build_model
from lmlab.models.seq2seq import Seq2Seq

BOS, EOS, PAD = 0, 1, 2
V = 13  # 3 special tokens + 10 symbols


def small(**over) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="seq2seq", vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=32, **over)
    return build_model(cfg).eval()


VARIANTS = [
    dict(pos="sinusoidal"),
    dict(pos="learned", norm_position="post"),
    dict(pos="rope", src_vocab_size=9, tie_embeddings=False),
    dict(pos="none", n_encoder_layer=3, n_kv_head=1),
]


@pytest.mark.parametrize("over", VARIANTS)
def test_decoder_cannot_see_future_target_tokens(over):
    model = small(**over)
    src_vocab = over.get("src_vocab_size") or V
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, src_vocab, (2, 7), generator=g)
    tgt = torch.randint(3, V, (2, 10), generator=g)
    base = model(src, tgt).logits
    for t in range(tgt.size(1) - 1):
        changed = tgt.clone()
        changed[:, t + 1] = 3 + (changed[:, t + 1] - 2) % (V - 3)  # another symbol
        out = model(src, changed).logits
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4  # the test can see a change where one is due


@pytest.mark.parametrize("over", VARIANTS)
def test_source_padding_does_not_change_outputs(over):
    model = small(**over)
    src_vocab = over.get("src_vocab_size") or V
    g = torch.Generator().manual_seed(2)
    lengths = [3, 7, 5]
    srcs = [torch.randint(3, src_vocab, (n,), generator=g) for n in lengths]
    tgt = torch.randint(3, V, (3, 6), generator=g)
    padded = torch.full((3, 7), PAD)
    for i, s in enumerate(srcs):
        padded[i, : len(s)] = s
    mask = padded != PAD
    out = model(padded, tgt, src_mask=mask)
    for i, s in enumerate(srcs):
        alone = model(s[None], tgt[i : i + 1])
        torch.testing.assert_close(out.logits[i], alone.logits[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(
            out.encoder_hidden_states[i, : len(s)], alone.encoder_hidden_states[0], atol=1e-5, rtol=0
        )
    unmasked = model(padded, tgt).logits  # without the mask the pads are read: the test would notice
    assert (unmasked[0] - out.logits[0]).abs().max() > 1e-4


def test_target_padding_mask_keeps_pads_out():
    model = small()
    src = torch.randint(3, V, (2, 5), generator=torch.Generator().manual_seed(3))
    tgt = torch.tensor([[BOS, 4, 5, 6, 7], [BOS, 8, 9, PAD, PAD]])
    out = model(src, tgt, tgt_mask=tgt != PAD).logits
    alone = model(src[1:], tgt[1:, :3]).logits
    torch.testing.assert_close(out[1, :3], alone[0], rtol=0, atol=1e-5)


def test_cross_attention_weights_are_distributions_that_skip_source_pads():
    model = small()
    src = torch.tensor([[4, 5, 6, 7], [8, 9, PAD, PAD]])
    tgt = torch.tensor([[BOS, 4, 5], [BOS, 6, 7]])
    out = model(src, tgt, src_mask=src != PAD, return_attention=True)
    assert len(out.cross_attentions) == 2 and len(out.attentions) == 2
    for w in out.cross_attentions:
        assert w.shape == (2, 2, 3, 4)  # (B, H, T, S)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 3))
        assert (w[1, :, :, 2:] == 0).all()
    for w in out.attentions:  # decoder self-attention stays causal
        assert (w.triu(1) == 0).all()
    plain = model(src, tgt, src_mask=src != PAD)  # the explicit path computes what the fused kernel does
    torch.testing.assert_close(out.logits, plain.logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("over", VARIANTS)
def test_cached_decoding_equals_uncached(over):
    model = small(**over)
    src_vocab = over.get("src_vocab_size") or V
    g = torch.Generator().manual_seed(4)
    src = torch.randint(3, src_vocab, (3, 6), generator=g)
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[2, 4:] = False
    tgt = torch.randint(3, V, (3, 8), generator=g)
    full = model(src, tgt, src_mask=mask).logits
    cache = model.start(src, mask)
    first = model.step(tgt[:, :3], cache)  # a prompt of several tokens, then one at a time
    torch.testing.assert_close(first, full[:, 2], rtol=0, atol=1e-5)
    order = torch.tensor([2, 0, 1])  # beam search reorders rows mid-way
    cache.select(order)
    full = full[order]
    for t in range(3, 8):
        torch.testing.assert_close(model.step(tgt[order, t : t + 1], cache), full[:, t], rtol=0, atol=1e-5)
    assert cache.length == 8
    cached = greedy_search(model, src, mask, bos_id=BOS, eos_id=EOS, max_new_tokens=12)
    uncached = greedy_search(model, src, mask, bos_id=BOS, eos_id=EOS, max_new_tokens=12, use_cache=False)
    assert cached == uncached


def test_beam_search_with_a_huge_beam_finds_the_best_sequence():
    """Exhaustive check: with more beams than sequences, beam search returns the brute-force optimum."""
    torch.manual_seed(5)
    cfg = ModelConfig(arch="seq2seq", vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=16, init_std=0.5)
    model = build_model(cfg).eval()
    src = torch.tensor([[3, 4, 3]])
    steps = 3
    for penalty in (0.0, 1.0):
        best, best_score = None, -math.inf
        for n in range(steps + 1):
            for body in itertools.product([0, 2, 3, 4], repeat=n):  # every token but EOS
                ended = n < steps
                seq = [BOS, *body] + ([EOS] if ended else [])
                logp = F.log_softmax(model(src, torch.tensor([seq[:-1]])).logits[0], dim=-1)
                total = sum(logp[i, seq[i + 1]].item() for i in range(len(seq) - 1))
                score = total / max(len(seq) - 1, 1) ** penalty
                if score > best_score:
                    best, best_score = list(body), score
        found = beam_search(
            model, src, beam=4**steps, bos_id=BOS, eos_id=EOS, max_new_tokens=steps, length_penalty=penalty
        )
        assert found == [best]


# ---------------------------------------------------------------------------------------------
# A model that learned something: copy and reverse


def task_batch(kind: str, n: int, g: torch.Generator) -> tuple[list[list[int]], list[list[int]]]:
    lengths = torch.randint(1, 7, (n,), generator=g).tolist()
    srcs = [torch.randint(3, V, (m,), generator=g).tolist() for m in lengths]
    return srcs, [s if kind == "copy" else s[::-1] for s in srcs]


def train_tiny(kind: str, steps: int = 400) -> Seq2Seq:
    from lmlab.data.loader import collate

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("seq2seq-tiny").model, vocab_size=V)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        b = collate(*task_batch(kind, 64, g), bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=cfg.block_size)
        loss = model(b.src, b.tgt_in, b.tgt_out, src_mask=b.src_mask).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@pytest.fixture(scope="module", params=["copy", "reverse"])
def trained(request) -> tuple[str, Seq2Seq]:
    return request.param, train_tiny(request.param)


def test_seq2seq_tiny_learns_to_copy_and_reverse(trained):
    kind, model = trained
    srcs, want = task_batch(kind, 300, torch.Generator().manual_seed(123))  # sequences it never saw
    got = translate_ids(model, srcs, bos_id=BOS, eos_id=EOS, pad_id=PAD, beam=1, batch_size=64)
    exact = sum(g == w for g, w in zip(got, want)) / len(want)
    assert exact > 0.95, f"{kind}: exact match {exact:.1%}"
    beam = translate_ids(model, srcs, bos_id=BOS, eos_id=EOS, pad_id=PAD, beam=4, batch_size=64)
    assert sum(g == w for g, w in zip(beam, want)) / len(want) >= exact - 0.01


def test_beam_one_equals_greedy_and_batching_changes_nothing(trained):
    _, model = trained
    g = torch.Generator().manual_seed(7)
    srcs = [torch.randint(3, V, (n,), generator=g).tolist() for n in (1, 6, 3, 9, 2, 5)]
    kw = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_new_tokens=12)
    greedy = translate_ids(model, srcs, beam=1, batch_size=6, **kw)
    assert translate_ids(model, srcs, beam=1, batch_size=1, **kw) == greedy  # padding and dropped rows: no effect
    from lmlab.data.loader import collate

    b = collate(srcs, [[]] * 6, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=32)
    beam1 = beam_search(model, b.src, b.src_mask, beam=1, bos_id=BOS, eos_id=EOS, max_new_tokens=12)
    assert beam1 == greedy_search(model, b.src, b.src_mask, bos_id=BOS, eos_id=EOS, max_new_tokens=12) == greedy
    assert translate_ids(model, srcs, beam=3, batch_size=1, **kw) == translate_ids(model, srcs, beam=3, **kw)


# ---------------------------------------------------------------------------------------------


def test_label_smoothing_applies_in_training_only():
    model = small(label_smoothing=0.1)
    src, tgt = torch.randint(3, V, (2, 5)), torch.randint(3, V, (2, 6))
    targets = torch.randint(3, V, (2, 6))
    targets[1, 4:] = -100
    logits = model(src, tgt).logits
    plain = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    smooth = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(model(src, tgt, targets).loss, plain)
    torch.testing.assert_close(model.train()(src, tgt, targets).loss, smooth)


def test_shared_and_separate_embeddings():
    shared = small()
    assert shared.src_embed is shared.tgt_embed and shared.lm_head.weight is shared.tgt_embed.weight
    separate = small(src_vocab_size=40, tie_embeddings=False)
    assert separate.src_embed.weight.shape == (40, 32) and separate.src_embed is not separate.tgt_embed
    assert separate.lm_head.weight is not separate.tgt_embed.weight
    assert separate.num_params() - shared.num_params() == 40 * 32 + V * 32
    assert shared.num_params(non_embedding=True) == separate.num_params(non_embedding=True) - V * 32


@pytest.mark.parametrize("name", ["seq2seq-tiny", "seq2seq-base"])
def test_seq2seq_presets_build_and_run(name):
    cfg = dataclasses.replace(get_preset(name).model, vocab_size=100)
    model = build_model(cfg).eval()
    out = model(torch.randint(3, 100, (2, 7)), torch.randint(3, 100, (2, 5)))
    assert out.logits.shape == (2, 5, 100) and torch.isfinite(out.logits).all()
    assert model.flops_per_token() >= 3 * model.num_params(non_embedding=True)
