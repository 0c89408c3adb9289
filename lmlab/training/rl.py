"""Reinforcement learning from a reward: PPO as in InstructGPT, and GRPO. The second loop, rollout → score → update,
built from the trainer's parts (``CheckpointManager``, ``make_tracker``, ``StopRequest``, ``make_adamw``/``lr_at``,
``Runtime``), not a copy of the trainer.

One step:

1. **Rollout.** ``--train.batch-size`` prompts from a resumable, shuffled cursor over the prompt file (GRPO:
   each ``--group-size`` times) go through the generation engine (batched, KV cache, the same sampling
   pipeline as ``lmlab sample``), seeded by the run's seed and the step, so a resumed run draws the same
   responses. A response ends with the token that ends a reply (``<|end|>`` for a chat model, ``<|eos|>``
   otherwise) or is cut at ``--max-new-tokens``.
2. **Score.** The reward (``lmlab.eval.reward``: a reward model, a classifier's label, or a Python function)
   reads the prompt and response as text. A response that never ended is penalized (``--unfinished
   penalize``: its score minus ``--unfinished-penalty``) or scored as it is (``truncate``).
3. **Advantages.** PPO: per-token rewards ``−β·(log π_old − log π_ref)`` with the score added at the last token,
   values from a value head (on the policy's trunk, or a separate copy: ``--value``), GAE(γ, λ), advantages
   whitened. β is fixed, or adapted toward ``--target-kl`` (Ziegler et al. 2019). GRPO: the score minus its
   group's mean (divided by the group's std with ``--scale-std``) for every token of the response, no value
   model, and ``β·KL`` to the reference (Schulman's k3 estimator) in the loss; β = 0 loads no reference.
4. **Update.** ``--update-epochs`` passes over ``--minibatches`` minibatches: the clipped policy loss (and
   PPO's clipped value loss, and with ``--ptx-coef`` a language-modeling loss on ``--ptx-data``, InstructGPT's
   PPO-ptx), every loss a mean over response tokens.

The policy runs without dropout throughout (``eval()`` mode; gradients still flow), so the first minibatch's
probability ratio is exactly 1. Everything the next step depends on (policy, value head or model, optimizer, β,
the prompt cursor and data cursors, the global RNGs) is in each checkpoint: a run killed and resumed matches an
uninterrupted one bit for bit on CPU. A NaN reward, a KL to the reference past ``--max-kl``, a prompt that leaves
no room for ``--max-new-tokens`` in the context, all stop with a one-line error; the checkpoints already written
are untouched.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from lmlab import checkpoint as ckpt
from lmlab import io, runtime
from lmlab.config import TrainConfig
from lmlab.errors import LmlabError
from lmlab.eval.reward import Transform
from lmlab.objectives.base import FinetuneOptions, holdout
from lmlab.training.energy import EnergyMeter, kwh
from lmlab.training.optim import lr_at, make_adamw
from lmlab.training.signals import StopRequest
from lmlab.training.tracking import make_tracker

Unfinished = Literal["penalize", "truncate"]
Value = Literal["shared", "separate"]


@dataclass
class RLOptions(FinetuneOptions):
    """What PPO and GRPO share. DATA is the prompt file (--prompts): one prompt a line (.txt), or JSONL records
    with "prompt" (text, or a list of messages); --train.batch-size prompts make one rollout."""

    reward: str = ""  # a reward-model run, a classifier run (with --reward-label), or module:function
    reward_label: str | None = None  # classifier reward: the label whose probability is the reward
    reward_transform: Transform = "prob"  # classifier reward: prob | logprob of the label
    max_new_tokens: int = 32  # most tokens per response
    min_new_tokens: int = 0  # no ending token before this many (the policy's and reference's log-probs agree)
    temperature: float = 1.0  # sampling temperature of the rollouts (the policy's log-probs use it too)
    top_k: int = 0  # rollouts: keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # rollouts: nucleus sampling (1 = off)
    kl_coef: float = 0.05  # β: weight of the KL to the reference policy
    target_kl: float = 0.0  # adapt β toward this KL per response (nats); 0 = fixed β
    kl_horizon: int = 10_000  # the adaptive controller's horizon (responses)
    max_kl: float = 50.0  # stop when the mean KL per response to the reference passes this (nats)
    unfinished: Unfinished = "penalize"  # a response that never ended: penalize | truncate (score it as it is)
    unfinished_penalty: float = 1.0  # subtracted from the score of a response that never ended
    update_epochs: int = 4  # passes over each rollout batch
    minibatches: int = 4  # minibatches per pass
    clip: float = 0.2  # ε of the clipped probability ratio
    eval_samples: int = 1  # validation: responses per validation prompt

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("min_new_tokens", 0 <= self.min_new_tokens <= self.max_new_tokens, "from 0 to --max-new-tokens"),
            ("temperature", 0 < self.temperature < math.inf, "positive (rollouts sample)"),
            ("kl_coef", 0 <= self.kl_coef < math.inf, "0 or more"),
            ("target_kl", 0 <= self.target_kl < math.inf, "0 (fixed β) or more"),
            ("kl_horizon", self.kl_horizon >= 1, "at least 1"),
            ("max_kl", self.max_kl > 0, "positive"),
            ("update_epochs", self.update_epochs >= 1, "at least 1"),
            ("minibatches", self.minibatches >= 1, "at least 1"),
            ("clip", 0 < self.clip < 1, "in (0, 1)"),
            ("eval_samples", self.eval_samples >= 1, "at least 1"),
            ("unfinished_penalty", math.isfinite(self.unfinished_penalty), "a number"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise LmlabError(f"--{name.replace('_', '-')} must be {what}, got {getattr(self, name)}")
        from lmlab.generation.sampling import SamplingParams

        SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)  # its own range checks
        from lmlab.eval.reward import TRANSFORMS

        if self.reward_transform not in TRANSFORMS:
            raise LmlabError(f"--reward-transform {self.reward_transform!r}: choose {' or '.join(TRANSFORMS)}")
        if self.unfinished not in get_args(Unfinished):
            raise LmlabError(f"--unfinished {self.unfinished!r}: choose penalize or truncate")
        if self.target_kl and not self.kl_coef:
            raise LmlabError("--target-kl adapts --kl-coef, which is 0; give a starting --kl-coef")


@dataclass
class PPOOptions(RLOptions):
    """PPO as in InstructGPT: rollouts, a per-token KL penalty to the frozen starting policy, a value head, GAE,
    clipped policy and value losses."""

    value: Value = "shared"  # the value head: on the policy's trunk (shared) or on a separate copy
    vf_coef: float = 0.1  # weight of the value loss
    value_clip: float = 0.2  # clip of the value's change from its rollout value
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE λ
    whiten: bool = True  # normalize advantages over each rollout batch
    ptx_coef: float = 0.0  # PPO-ptx: weight of a language-modeling loss on --ptx-data (0 = off)
    ptx_data: str | None = None  # a prepared dataset directory (lmlab prepare) for PPO-ptx

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value not in get_args(Value):
            raise LmlabError(f"--value {self.value!r}: choose shared or separate")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise LmlabError(f"--gamma and --lam must be in [0, 1], got {self.gamma} and {self.lam}")
        if self.vf_coef < 0 or self.value_clip <= 0 or self.ptx_coef < 0:
            raise LmlabError("--vf-coef and --ptx-coef must be 0 or more, --value-clip positive")
        if bool(self.ptx_coef) != (self.ptx_data is not None):
            raise LmlabError("PPO-ptx takes both --ptx-coef (above 0) and --ptx-data DIR")


@dataclass
class GRPOOptions(RLOptions):
    """GRPO (Shao et al. 2024): several responses per prompt, advantages relative to their group, no value model,
    KL to the reference in the loss (β = 0: no reference is loaded)."""

    group_size: int = 4  # responses per prompt
    scale_std: bool = True  # divide each advantage by its group's standard deviation
    kl_coef: float = 0.04  # β of the KL term in the loss (DeepSeekMath's value); 0 = no reference model
    update_epochs: int = 1  # passes over each rollout batch (GRPO: one)
    minibatches: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise LmlabError(
                f"--group-size must be at least 2 (advantages are relative to the group), got {self.group_size}"
            )
        if self.target_kl:
            raise LmlabError("--target-kl is PPO's adaptive KL penalty; GRPO's KL term has a fixed --kl-coef")


METHODS: dict[str, type[RLOptions]] = {"ppo": PPOOptions, "grpo": GRPOOptions}

RECIPE: dict[str, Any] = {
    "lr": 1e-5,
    "min_lr": 0.0,
    "batch_size": 16,  # prompts per rollout
    "schedule": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "best_metric": "val_reward",
    "best_mode": "max",
    "sample_tokens": 0,
}


# ---------------------------------------------------------------------------------------------
# Prompts


def read_prompts(path: str | Path) -> list[tuple[int, Any]]:
    """(line, prompt) of every prompt in ``path``: a text file (one a line) or JSONL with "prompt"."""
    from lmlab.data.chat import check_messages

    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"prompt file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    out: list[tuple[int, Any]] = []
    jsonl = path.suffix == ".jsonl"
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if not jsonl:
            out.append((n, line))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{path.name}:{n}: not a JSON object ({e.msg})") from None
        p = rec.get("prompt") if isinstance(rec, dict) else None
        if isinstance(p, list):
            p = tuple(check_messages(p, f"{path.name}:{n}"))
        elif not isinstance(p, str):
            raise LmlabError(f'{path.name}:{n}: a prompt record needs "prompt": text or a list of messages')
        out.append((n, p))
    if not out:
        raise LmlabError(f"{path} has no prompts")
    return out


class Prompts:
    """Prompts encoded for the policy, each checked to leave room for a response in the context."""

    def __init__(
        self,
        items: Sequence[tuple[int, Any]],
        tokenizer: Any,
        template: bool,
        block_size: int,
        max_new: int,
        where: str,
    ) -> None:
        from lmlab.data.responses import prompt_ids

        self.texts, self.ids = [], []
        for line, p in items:
            ids = prompt_ids(tokenizer, p, template, where=f"{where}:{line}")
            if len(ids) + max_new > block_size:
                raise LmlabError(
                    f"{where}:{line}: the prompt has {len(ids)} tokens; with --max-new-tokens {max_new} it outgrows "
                    f"the model's context ({block_size}); shorten it or lower --max-new-tokens"
                )
            self.texts.append(p)
            self.ids.append(ids)


class PromptCursor:
    """Batches of prompt indices, shuffled every epoch, resumable (the same cursor the data loaders use)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        from lmlab.data.loader import IndexedLoader

        class _Indices(IndexedLoader):
            def collate(self, rows: np.ndarray) -> list[int]:
                return [int(r) for r in rows]

        self.loader = _Indices(n, batch_size, shuffle=True, seed=seed, name="prompt")

    def __next__(self) -> list[int]:
        return next(self.loader)


# ---------------------------------------------------------------------------------------------
# Log-probabilities and rollouts


def token_logprobs(
    model: nn.Module, tokens: Tensor, temperature: float, ban: tuple[Tensor, int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(log-probs (B, T-1) of tokens[:, 1:] at ``temperature``, the logits (B, T-1, V), the hidden states).
    ``ban`` (mask (B, T-1), token): that token is impossible where the mask is set, as it was when sampling
    (``--min-new-tokens``), so the log-probs are those of the distribution the responses came from."""
    out = model(tokens[:, :-1])
    logits = out.logits.float()
    if ban is not None:
        where, token = ban
        logits = logits.clone()
        logits[..., token] = logits[..., token].masked_fill(where, float("-inf"))
    logp = (logits / temperature).log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return logp, logits, out.hidden_states


@dataclass
class Rollout:
    """A batch of responses, right-padded, and what PPO or GRPO computed from them (no gradients)."""

    prompt_index: list[int]  # which prompt of the split each row answers
    tokens: Tensor  # (B, T) prompt + response (+ padding)
    mask: Tensor  # (B, T-1) True where position t predicts a response token
    texts: list[str]  # the responses as text
    ban: tuple[Tensor, int] | None  # (mask (B, T-1), stop token): where --min-new-tokens forbade ending
    ended: Tensor  # (B,) bool: the response ended by itself
    scores: Tensor  # (B,) the reward's score (after the unfinished penalty)
    raw_scores: Tensor  # (B,) the reward's score as given
    old_logp: Tensor  # (B, T-1)
    ref_logp: Tensor | None  # (B, T-1), None without a reference
    lengths: Tensor  # (B,) response tokens


def distinct_2(texts: Sequence[str]) -> float:
    """Distinct-2 (Li et al. 2016): distinct word bigrams over all bigrams of the texts (1 = no repetition)."""
    grams = [tuple(w[i : i + 2]) for w in (t.split() for t in texts) for i in range(len(w) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


class Sampler:
    """Rollouts of a policy: responses from the engine, their scores, and log-probs under the policy and the frozen
    reference. The RL trainer and ``lmlab eval RUN --prompts`` share it."""

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module | None,
        reward: Any,
        tokenizer: Any,
        template: bool,
        opts: RLOptions,
        rt: runtime.Runtime,
    ) -> None:
        """``reference``: a frozen model, None for none, or the policy itself for a LoRA policy (the base is the
        policy with its adapters off)."""
        from lmlab.data.responses import stop_id

        self.policy, self.reference, self.reward, self.opts, self.rt = policy, reference, reward, opts, rt
        self.tokenizer, self.template = tokenizer, template
        self.stop_token = stop_id(tokenizer, template)
        self.banned = sorted(i for i in tokenizer.special_tokens.values() if i != self.stop_token)
        self.where = ""  # where a failure happened, for its message (the RL trainer: the step and last checkpoint)

    def ref_logp(self, tokens: Tensor, temperature: float, ban: tuple[Tensor, int] | None = None) -> Tensor:
        if self.reference is self.policy:
            from lmlab.models.lora import adapters_off

            with adapters_off(self.policy):
                return token_logprobs(self.policy, tokens, temperature, ban)[0]
        return token_logprobs(self.reference, tokens, temperature, ban)[0]

    @torch.no_grad()
    def rollout(self, prompts: Prompts, index: list[int], seed: int, *, penalize: bool = True) -> Rollout:
        """Responses to ``prompts[index]`` and their scores, log-probs under the policy and the reference."""
        from lmlab.data.loader import pad_rows
        from lmlab.generation.engine import generate_ids
        from lmlab.generation.request import GenerationRequest

        o = self.opts
        request = GenerationRequest(
            max_new_tokens=o.max_new_tokens,
            min_new_tokens=o.min_new_tokens,
            temperature=o.temperature,
            top_k=o.top_k,
            top_p=o.top_p,
            seed=seed,
            stop_token_ids=(self.stop_token,),
        )
        with self.rt.autocast():
            done = generate_ids(
                self.policy, [prompts.ids[i] for i in index], request, banned_ids=self.banned, on_notice=lambda m: None
            )
        ended = torch.tensor([c.finish_reason == "stop" for c in done])
        resp = [[t for t in c.tokens if t != self.stop_token] for c in done]
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in resp]
        raw = self.reward([prompts.texts[i] for i in index], texts)
        for v, t in zip(raw, texts):
            if not math.isfinite(v):
                raise LmlabError(f"the reward ({self.reward.name}) is {v} for the response {t[:60]!r}{self.where}")
        raw_t = torch.tensor(raw, dtype=torch.float32)
        scores = raw_t.clone()
        if penalize and o.unfinished == "penalize":
            scores[~ended] -= o.unfinished_penalty
        seqs = [prompts.ids[i] + c.tokens for i, c in zip(index, done)]
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        tokens = pad_rows(seqs, pad).to(self.rt.device)
        p_len = torch.tensor([len(prompts.ids[i]) for i in index], device=self.rt.device)
        total = torch.tensor([len(s) for s in seqs], device=self.rt.device)
        t = torch.arange(tokens.size(1) - 1, device=self.rt.device)[None, :] + 1  # index of each predicted token
        mask = (t >= p_len[:, None]) & (t < total[:, None])
        ban = (mask & (t - p_len[:, None] < o.min_new_tokens), self.stop_token) if o.min_new_tokens else None
        with self.rt.autocast():
            old = token_logprobs(self.policy, tokens, o.temperature, ban)[0]
            ref = self.ref_logp(tokens, o.temperature, ban) if self.reference is not None else None
        dev = self.rt.device
        return Rollout(
            index, tokens, mask, texts, ban, ended.to(dev), scores.to(dev), raw_t.to(dev), old, ref, (total - p_len)
        )

    @torch.no_grad()
    def evaluate(self, prompts: Prompts, *, samples: int = 1, batch_size: int = 16, seed: int = 0):
        """(metrics, samples) of ``samples`` responses to every prompt, drawn with ``seed`` (the same responses for
        the same policy): the mean score, the fraction that ended, length, distinct-2, and with a reference the KL
        to it per response and its perplexity of the responses (at temperature 1: are they still language?)."""
        index = [i for i in range(len(prompts.ids)) for _ in range(samples)]
        scores, kls, ended, lengths, texts, ref_lp, n_tok = [], [], [], [], [], 0.0, 0
        for s in range(0, len(index), batch_size):
            part = index[s : s + batch_size]
            ro = self.rollout(prompts, part, seed + 7919 * (s + 1), penalize=False)
            scores += ro.raw_scores.tolist()
            ended += ro.ended.tolist()
            lengths += ro.lengths.tolist()
            texts += ro.texts
            if ro.ref_logp is not None:
                kls += ((ro.old_logp - ro.ref_logp) * ro.mask).sum(1).tolist()
                ref1 = self.ref_logp(ro.tokens, 1.0, ro.ban) if self.opts.temperature != 1.0 else ro.ref_logp
                ref_lp += float((ref1 * ro.mask).sum())
                n_tok += int(ro.mask.sum())
        metrics = {
            "val_reward": float(np.mean(scores)),
            "val_reward_se": float(np.std(scores) / math.sqrt(len(scores))),
            "val_ended": float(np.mean(ended)),
            "val_length": float(np.mean(lengths)),
            "val_distinct2": distinct_2(texts),
        }
        if kls:
            metrics["val_kl"] = float(np.mean(kls))
            metrics["val_ref_ppl"] = math.exp(min(-ref_lp / max(n_tok, 1), 50.0))
        out = [{"prompt": prompts.texts[i], "response": t, "reward": r} for i, t, r in zip(index, texts, scores)]
        return metrics, out


class RLTrainer:
    """PPO or GRPO on a policy (the run's model), writing into ``run_dir``."""

    def __init__(
        self,
        policy: nn.Module,
        method: str,
        opts: RLOptions,
        cfg: TrainConfig,
        run_dir: Path,
        rt: runtime.Runtime,
        tokenizer: Any,
        template: bool,
        train: Prompts,
        val: Prompts,
        *,
        start: Path | None = None,
        resume_from: Path | None = None,
        ptx: Any = None,
    ) -> None:
        from lmlab.eval.reward import load_reward

        if not opts.reward:
            raise LmlabError("give the reward: --reward RUN (a reward model or classifier run) or module:function")
        self.method, self.opts, self.cfg, self.rt = method, opts, cfg, rt
        self.run_dir = Path(run_dir)
        self.train_prompts, self.val_prompts = train, val
        self.policy = policy.to(rt.device).eval()  # no dropout in RL: the ratio of the first minibatch is 1
        reward = load_reward(opts.reward, label=opts.reward_label, transform=opts.reward_transform, device=rt.device)
        self.lora = bool(getattr(policy, "saves_adapter_only", False))
        # the frozen reference: the starting weights (the base with adapters off for LoRA: no copy)
        self.reference: nn.Module | None = None
        if opts.kl_coef > 0 or method == "ppo":
            if self.lora:
                self.reference = self.policy
            else:
                self.reference = copy.deepcopy(policy)
                if start is not None:  # a resumed run: the starting weights are the parent's checkpoint
                    ckpt.load_weights(self.reference, start)
                self.reference.to(rt.device).eval().requires_grad_(False)
        self.sampler = Sampler(self.policy, self.reference, reward, tokenizer, template, opts, rt)
        width = policy.lm_head.in_features
        self.value_model: nn.Module | None = None
        self.value_head: nn.Module | None = None
        if method == "ppo":
            from lmlab.models.linear import Linear

            torch.manual_seed(cfg.seed)
            self.value_head = Linear(width, 1).to(rt.device)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            if opts.value == "separate":
                self.value_model = copy.deepcopy(self.reference)
                self.value_model.requires_grad_(True).to(rt.device).eval()
                if self.lora:
                    from lmlab.models.lora import merge_lora

                    merge_lora(self.value_model)
        parts = nn.ModuleDict({"policy": self.policy})
        if self.value_head is not None:
            parts["value_head"] = self.value_head
        if self.value_model is not None:
            parts["value_model"] = self.value_model
        self.params = [p for p in parts.parameters() if p.requires_grad]
        if cfg.optimizer != "adamw":
            raise LmlabError(f"--train.optimizer {cfg.optimizer}: {method} trains with adamw only")
        self.optimizer = make_adamw(
            parts, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, rt.device, cfg.embedding_decay
        )
        self.kl_coef = opts.kl_coef
        self.rollout_rows = cfg.batch_size * (getattr(opts, "group_size", 1) if method == "grpo" else 1)
        self.cursor = PromptCursor(len(train.ids), cfg.batch_size, cfg.seed)
        self.ptx = ptx  # an LM batch loader, or None
        self.ckpts = ckpt.CheckpointManager(
            self.run_dir / "checkpoints",
            keep_last=cfg.keep_last,
            keep_best=cfg.keep_best,
            metric=cfg.best_metric,
            mode=cfg.best_mode,
            every_steps=cfg.save_every,
            every_minutes=cfg.save_every_minutes,
        )
        self.step, self.responses_seen, self.tokens_seen, self.elapsed_before = 0, 0, 0, 0.0
        self.energy_before = 0.0
        self.meter = EnergyMeter(rt.device.type, torch.get_num_threads(), cfg.power_watts,
                                 device_index=rt.device.index or 0)  # fmt: skip
        self.t0 = time.monotonic()
        if resume_from is not None:
            self._restore(resume_from)
        self.stop = StopRequest()
        self.tracker = make_tracker(self.run_dir, cfg, self.step) if rt.is_main else None

    # -- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "value_head": self.value_head.state_dict() if self.value_head is not None else None,
            "value_model": self.value_model.state_dict() if self.value_model is not None else None,
            "kl_coef": self.kl_coef,
            "loader": self.cursor.loader.state_dict(),
            "ptx_loader": self.ptx.state_dict() if self.ptx is not None else None,
            "rng": runtime.rng_state(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "responses_seen": self.responses_seen,
            "elapsed_s": self.elapsed_before + time.monotonic() - self.t0,
            "energy_j": self.energy_before + self.meter.joules(),
        }

    def _energy(self) -> dict[str, float]:
        used = kwh(self.energy_before + self.meter.joules())
        return {"energy_kwh": used, "co2_kg": used * self.cfg.carbon_intensity / 1000}

    def _restore(self, path: Path) -> None:
        ckpt.load_weights(self.policy, path, self.rt.device)
        state = ckpt.load_trainer_state(path)
        if state is None:
            raise LmlabError(f"checkpoint {path} has no trainer state (weights only); it cannot be resumed")
        if self.value_head is not None:
            self.value_head.load_state_dict(state["value_head"])
        if self.value_model is not None:
            self.value_model.load_state_dict(state["value_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_coef = float(state["kl_coef"])
        self.cursor.loader.load_state_dict(state["loader"])
        if self.ptx is not None:
            self.ptx.load_state_dict(state["ptx_loader"])
        runtime.set_rng_state(state["rng"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.responses_seen = int(state["responses_seen"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.energy_before = float(state.get("energy_j", 0.0))

    def _save(self, metrics: dict[str, Any]) -> None:
        if not self.rt.is_main:
            return
        state = {"tokens_seen": self.tokens_seen, "metrics": metrics, "time": time.time()}
        try:
            self.ckpts.save(self.step, self.policy, state, self._state())
        except OSError as e:
            raise LmlabError(
                f"could not save the checkpoint of step {self.step} ({e.strerror or e}); the earlier checkpoints "
                f"are intact: free some disk space and resume with lmlab train --resume {self.run_dir}"
            ) from None

    def _last_good(self) -> str:
        last = self.ckpts.root / "latest"
        return f"the last good checkpoint is {last.resolve().name}" if last.exists() else "no checkpoint was saved"

    def _values(self, tokens: Tensor, hidden: Tensor | None) -> Tensor:
        """(B, T-1) values of the states before each predicted token."""
        if self.value_model is not None:
            hidden = self.value_model(tokens[:, :-1]).hidden_states
        return self.value_head(hidden.float()).squeeze(-1)

    # -- advantages ------------------------------------------------------------------------------
    def _gae(self, ro: Rollout, values: Tensor) -> tuple[Tensor, Tensor]:
        """(advantages, returns), each (B, T-1), zero outside the responses."""
        o = self.opts
        m = ro.mask.float()
        kl = (ro.old_logp - ro.ref_logp) * m
        rewards = -self.kl_coef * kl
        last = ro.mask.long().cumsum(1).argmax(1)  # the position of each row's last response token
        rewards[torch.arange(len(last)), last] += ro.scores
        values = values * m
        adv = torch.zeros_like(values)
        running = torch.zeros(values.size(0), device=values.device)
        for t in reversed(range(values.size(1))):
            nxt = values[:, t + 1] if t + 1 < values.size(1) else torch.zeros_like(running)
            delta = rewards[:, t] + o.gamma * nxt - values[:, t]
            running = (delta + o.gamma * o.lam * running) * m[:, t]
            adv[:, t] = running
        return adv, (adv + values) * m

    @staticmethod
    def _whiten(x: Tensor, mask: Tensor) -> Tensor:
        v = x[mask]
        return ((x - v.mean()) / (v.std(unbiased=False) + 1e-8)) * mask

    def _group_advantages(self, scores: Tensor, mask: Tensor) -> Tensor:
        g = scores.view(-1, self.opts.group_size)  # (prompts, group)
        adv = g - g.mean(1, keepdim=True)
        if self.opts.scale_std:
            adv = adv / (g.std(1, keepdim=True) + 1e-4)
        return adv.reshape(-1, 1) * mask.float()

    # -- one step --------------------------------------------------------------------------------
    def _step(self) -> dict[str, float]:
        o, cfg = self.opts, self.cfg
        index = next(self.cursor)
        if self.method == "grpo":
            index = [i for i in index for _ in range(o.group_size)]
        seed = int(np.random.SeedSequence([cfg.seed, self.step]).generate_state(1, np.uint64)[0] >> 1)
        self.sampler.where = f" at step {self.step + 1}; {self._last_good()}"
        ro = self.sampler.rollout(self.train_prompts, index, seed)
        m = ro.mask
        seq_kl = ((ro.old_logp - ro.ref_logp) * m).sum(1) if ro.ref_logp is not None else None
        if seq_kl is not None and float(seq_kl.mean()) > o.max_kl:
            raise LmlabError(
                f"the KL to the reference reached {float(seq_kl.mean()):.1f} nats per response at step "
                f"{self.step + 1} (--max-kl {o.max_kl}): the policy is drifting away; {self._last_good()}. Lower "
                "--train.lr or raise --kl-coef"
            )
        if self.method == "ppo":
            with torch.no_grad(), self.rt.autocast():
                hidden = None
                if self.value_model is None:
                    hidden = self.policy(ro.tokens[:, :-1]).hidden_states
                old_values = self._values(ro.tokens, hidden) * m
            adv, returns = self._gae(ro, old_values)
            if o.whiten:
                adv = self._whiten(adv, m)
        else:
            adv, returns, old_values = self._group_advantages(ro.scores, m), None, None
        lr = lr_at(
            self.step,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
            schedule=cfg.schedule,
            decay_fraction=cfg.decay_fraction,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        B = ro.tokens.size(0)
        gen = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = {}
        updates = 0
        for _ in range(o.update_epochs):
            order = torch.randperm(B, generator=gen)
            for part in order.chunk(min(o.minibatches, B)):
                part = part.to(self.rt.device)
                stats = self._update(ro, part, adv, returns, old_values)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                updates += 1
        if self.method == "ppo" and o.target_kl and seq_kl is not None:  # Ziegler et al.'s proportional controller
            err = float(np.clip(float(seq_kl.mean()) / o.target_kl - 1, -0.2, 0.2))
            self.kl_coef *= 1 + err * B / o.kl_horizon
        row = {k: v / updates for k, v in sums.items()}
        row.update(
            reward_mean=float(ro.raw_scores.mean()),
            reward_std=float(ro.raw_scores.std(unbiased=False)),
            score_mean=float(ro.scores.mean()),
            ended=float(ro.ended.float().mean()),
            response_length=float(ro.lengths.float().mean()),
            lr=lr,
            kl_coef=self.kl_coef,
        )
        if seq_kl is not None:
            row["kl"] = float(seq_kl.mean())
        if self.method == "ppo":
            resid = (returns - old_values)[m]
            var = returns[m].var(unbiased=False)
            row["explained_variance"] = float(1 - resid.var(unbiased=False) / var) if var > 0 else 0.0
        self.responses_seen += B
        self.tokens_seen += int(ro.lengths.sum())
        return row

    def _update(self, ro: Rollout, part: Tensor, adv: Tensor, returns: Tensor | None, old_values: Tensor | None):
        o = self.opts
        tokens, m = ro.tokens[part], ro.mask[part]
        mf = m.float()
        n = mf.sum().clamp(min=1)
        with self.rt.autocast():
            ban = (ro.ban[0][part], ro.ban[1]) if ro.ban is not None else None
            logp, logits, hidden = token_logprobs(self.policy, tokens, o.temperature, ban)
        ratio = torch.exp(logp - ro.old_logp[part])
        a = adv[part]
        pg = torch.max(-a * ratio, -a * ratio.clamp(1 - o.clip, 1 + o.clip))
        pg_loss = (pg * mf).sum() / n
        loss = pg_loss
        stats: dict[str, Tensor] = {"pg_loss": pg_loss.detach()}
        if self.method == "ppo":
            v = self._values(tokens, hidden)
            v_old, ret = old_values[part], returns[part]
            v_clip = v_old + (v - v_old).clamp(-o.value_clip, o.value_clip)
            vf = 0.5 * torch.max((v - ret) ** 2, (v_clip - ret) ** 2)
            vf_loss = (vf * mf).sum() / n
            loss = loss + o.vf_coef * vf_loss
            stats["value_loss"] = vf_loss.detach()
            if self.ptx is not None:
                x, y = next(self.ptx)
                with self.rt.autocast():
                    ptx_loss = self.policy(x, y).loss
                loss = loss + o.ptx_coef * ptx_loss
                stats["ptx_loss"] = ptx_loss.detach()
        elif self.kl_coef > 0:
            d = ro.ref_logp[part] - logp
            k3 = torch.exp(d) - d - 1  # Schulman's unbiased, always positive KL estimator
            kl_loss = (k3 * mf).sum() / n
            loss = loss + self.kl_coef * kl_loss
            stats["kl_loss"] = kl_loss.detach()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        )
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise LmlabError(
                f"the loss is {float(loss)} at step {self.step + 1}: training diverged; "
                f"{self._last_good()}. Lower --train.lr"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            entropy = torch.special.entr((logits / o.temperature).softmax(-1)).sum(-1)  # 0·log 0 = 0 (banned)
            stats["entropy"] = (entropy * mf).sum() / n
            stats["clip_fraction"] = (((ratio - 1).abs() > o.clip).float() * mf).sum() / n
            stats["grad_norm"] = grad_norm
        return {k: float(v) for k, v in stats.items()}

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> Any:
        from lmlab.training.trainer import TrainResult

        cfg = self.cfg
        bar = None
        if cfg.progress and self.rt.is_main:
            from tqdm import tqdm

            bar = tqdm(
                total=cfg.max_steps,
                initial=self.step,
                desc=self.method,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30.0,
            )
        self.stop.install()
        status, last_eval = "finished", {}
        self.t0 = time.monotonic()
        self.meter.reset()
        try:
            while self.step < cfg.max_steps:
                if self.stop.signum is not None:
                    status = "interrupted"
                    break
                row = self._step()
                self.step += 1
                eval_due = (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps
                if self.ckpts.due(self.step) or self.step == cfg.max_steps or (eval_due and not cfg.save_every):
                    self._save({})
                if eval_due:
                    metrics, samples = self.sampler.evaluate(
                        self.val_prompts, samples=self.opts.eval_samples, batch_size=self.rollout_rows, seed=cfg.seed
                    )
                    last_eval = {"step": self.step, **metrics}
                    if self.rt.is_main:
                        self.ckpts.record(self.step, metrics)
                        io.write_text(
                            self.run_dir / "samples.jsonl",
                            "".join(json.dumps({"step": self.step, **s}) + "\n" for s in samples),
                        )
                    row.update(metrics)
                    row["sample"] = samples[0]["response"] if samples else ""
                    line = f"step {self.step:>5}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                    if bar is None:
                        print(line, file=sys.stderr)
                    else:
                        bar.write(line)
                if self.tracker is not None:
                    elapsed = self.elapsed_before + time.monotonic() - self.t0
                    seen = {"tokens": self.tokens_seen, "responses": self.responses_seen, "elapsed_s": elapsed,
                            **self._energy()}  # fmt: skip
                    self.tracker.log(self.step, {**seen, **row})
                if bar is not None:
                    bar.set_postfix_str(
                        f"reward {row['reward_mean']:.3f}" + (f"  kl {row['kl']:.2f}" if "kl" in row else ""),
                        refresh=False,
                    )
                    bar.update(1)
            if status == "interrupted" and self.step > 0:
                if not (self.ckpts.root / ckpt.step_name(self.step)).exists():
                    self._save({})
        finally:
            self.stop.restore()
            if bar is not None:
                bar.close()
            if self.tracker is not None:
                self.tracker.close()
        result = TrainResult(self.run_dir, self.step, self.tokens_seen, status, last_eval, signum=self.stop.signum,
                             energy_source=self.meter.describe(), **self._energy())  # fmt: skip
        best = self.ckpts.ranked()
        if best:
            result.best = {
                "checkpoint": best[0],
                cfg.best_metric: self.ckpts.index[best[0]]["metrics"][cfg.best_metric],
            }
        return result


# ---------------------------------------------------------------------------------------------
# Building a run


def split_prompts(data: str | Path, opts: RLOptions, seed: int) -> tuple[list, list]:
    items = read_prompts(data)
    if opts.val is not None:
        return items, read_prompts(opts.val)
    return holdout(items, opts.val_fraction, seed, data, "prompt")


def build(
    policy: nn.Module,
    method: str,
    data: str | Path,
    opts: RLOptions,
    cfg: TrainConfig,
    run_dir: Path,
    rt: runtime.Runtime,
    tokenizer: Any,
    template: bool,
    *,
    start: Path | None = None,
    resume_from: Path | None = None,
) -> RLTrainer:
    """The RL trainer of a run: prompts read and checked, the reward loaded, PPO-ptx's data opened."""
    block = policy.config.block_size
    train_items, val_items = split_prompts(data, opts, cfg.seed)
    name = Path(data).name
    train = Prompts(train_items, tokenizer, template, block, opts.max_new_tokens, name)
    val = Prompts(val_items, tokenizer, template, block, opts.max_new_tokens, Path(opts.val).name if opts.val else name)
    if len(train.ids) < cfg.batch_size:
        raise LmlabError(
            f"{name} has {len(train.ids)} training prompts: fewer than one rollout of "
            f"--train.batch-size {cfg.batch_size}"
        )
    ptx = None
    if getattr(opts, "ptx_data", None):
        from lmlab.data.dataset import load_dataset
        from lmlab.objectives.base import objective_for

        ds = load_dataset(opts.ptx_data)
        same = ds.tokenizer.hf.to_str() == tokenizer.hf.to_str()
        if ds.vocab_size != policy.config.vocab_size or not same:
            raise LmlabError(
                f"--ptx-data {opts.ptx_data} was prepared with another tokenizer than the policy's; "
                "prepare it with the run's tokenizer.json (lmlab prepare SOURCE --tokenizer FILE)"
            )
        lm = objective_for(ds.task).from_dataset(ds, policy.config, ds.tokenizer)
        ptx = lm.batches("train", batch_size=cfg.batch_size, seed=cfg.seed, device=rt.device)
    trainer = RLTrainer(
        policy,
        method,
        opts,
        cfg,
        run_dir,
        rt,
        tokenizer,
        template,
        train,
        val,
        start=start,
        resume_from=resume_from,
        ptx=ptx,
    )
    trainer.summary = (
        f"{name}: {len(train.ids):,} training and {len(val.ids):,} validation prompts; reward: "
        + trainer.sampler.reward.name
    )
    return trainer


def evaluate_policy(
    run: str | Path, prompts: str | Path, reward: str, *, reward_label: str | None = None,
    reward_transform: str = "prob", reference: str | Path | None = None, samples: int = 1, max_new_tokens: int = 32,
    min_new_tokens: int = 0,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, batch_size: int = 32,
    checkpoint: str | None = None, device: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """Score a policy run's responses to every prompt of a file with a reward, against a reference run (default:
    the run's parent; the run itself when it has none): what the RL loop logs as val_*, for any language model
    (a DPO or SFT run, or the starting policy)."""
    from lmlab.eval.reward import load_reward
    from lmlab.generation.chat import uses_template
    from lmlab.runs import load, read_config

    run = Path(run)
    cfg = read_config(run)
    if "head" in cfg:
        raise LmlabError(f"{run} is a classifier or reward model; --prompts scores a policy (a language model)")
    opts = RLOptions(reward=reward, reward_label=reward_label, reward_transform=reward_transform,  # type: ignore[arg-type]
                     max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature,
                     top_k=top_k, top_p=top_p, eval_samples=samples)  # fmt: skip
    rt = runtime.setup(device, "fp32")
    policy = load(run, checkpoint=checkpoint, device=rt.device)
    if policy.tokenizer is None:
        raise LmlabError(f"{run} has no tokenizer.json")
    ref_path = Path(reference) if reference is not None else Path((cfg.get("parent") or {}).get("run") or run)
    if "lora" in cfg and reference is None:
        ref_model = policy.model  # the base is the policy with its adapters off
    else:
        if (
            read_config(ref_path)["model"] != cfg["model"]
            or not (ref_path / "tokenizer.json").is_file()
            or ((ref_path / "tokenizer.json").read_bytes() != (run / "tokenizer.json").read_bytes())
        ):
            raise LmlabError(f"--reference {ref_path} is not the same architecture and tokenizer as {run}")
        ref_model = load(ref_path, device=rt.device).model
    template = uses_template(cfg)
    items = read_prompts(prompts)
    val = Prompts(items, policy.tokenizer, template, policy.model.config.block_size, max_new_tokens, Path(prompts).name)
    scorer = load_reward(reward, label=reward_label, transform=reward_transform, device=rt.device)
    sampler = Sampler(policy.model.eval(), ref_model.eval(), scorer, policy.tokenizer, template, opts, rt)
    metrics, out = sampler.evaluate(val, samples=samples, batch_size=batch_size, seed=seed)
    return {
        "run": str(run), "checkpoint": policy.checkpoint.name, "reference": str(ref_path), "prompts": str(prompts),
        "reward": scorer.name, "n_responses": len(out), **{k.removeprefix("val_"): v for k, v in metrics.items()},
        "samples": out,
    }  # fmt: skip
