"""Weight-only quantization: int8 per output channel (w8a16) and int4 in groups along the input (w4a16).

A quantized layer stores integer codes ``u`` with a scale ``s`` (and for asymmetric schemes a zero point
``z``) per output row (int8) or per row and group of ``group_size`` inputs (int4), so that the weight is
``W ≈ (u − z)·s``. Symmetric schemes fix ``z`` at the middle of the code range (128, 8) and store no zero
points. Activations are not quantized.

What goes in ``model.safetensors`` (no pickle, device-independent), for a layer named ``L``:

- ``L.qweight``: int8 ``(N, K)`` holding ``u − 128`` (int8), or uint8 ``(N, K/2)`` (int4) holding two codes per
  byte, column ``2j`` in the low nibble and ``2j + 1`` in the high one;
- ``L.scales``: float ``(N,)`` (int8) or ``(N, K/group_size)`` (int4);
- ``L.zeros``: the zero points, same shape as the scales (int8: ``z − 128``; int4: uint8), asymmetric only;
- ``L.bias`` as before. The scheme itself is in the run's ``config.json`` (``quant``).

Matmuls (chosen per device when the model is loaded, see :func:`prepare`):

- CPU: PyTorch's packed kernels ``aten._weight_int8pack_mm`` and ``aten._weight_int4pack_mm_for_cpu``, fed
  bfloat16 activations (their float32 path is a slow fallback: 5-20x slower than bf16 in BENCHMARKS.md,
  bf16 at the same speed as or faster than an fp32 GEMM at every batch size we measured); the output is cast
  back to the activation dtype. The int4 kernel wants its own tiled layout, made once at load time from
  the stored codes (and kept beside them: the file format stays the portable one above).
- anywhere else (CUDA, MPS), and whenever asked: the reference path, dequantize then ``F.linear`` in the
  activation dtype. Every kernel is tested against it.

GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") quantizes one column of ``W`` at a time and moves each column's rounding error onto the
columns not yet quantized, weighted by the inverse Hessian ``H = XᵀX`` of the layer's inputs on a
calibration sample; :func:`gptq` is written here from the paper's Algorithm 1 (lazy batch updates,
Cholesky form of ``H⁻¹``, dampening). The Hessians are collected in one pass of the full-precision model
(see ``lmlab.api.quantize``), not block by block on the partly quantized model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.quant")

SCHEMES = {"int8": 8, "int4": 4}
GROUP_SIZES = (32, 64, 128, 256)
METHODS = ("rtn", "gptq")
KEEPABLE = ("embeddings", "head")
KERNELS = ("auto", "reference")


@dataclass(frozen=True)
class QuantSpec:
    """How weights are quantized: ``scheme`` int8 (per output channel) or int4 (groups of ``group_size``
    inputs), ``symmetric`` or not, ``method`` rtn or gptq, and which float tensors are kept (``keep``)."""

    scheme: str = "int8"
    group_size: int = 0  # int4: 32 | 64 | 128 | 256 (default 128); int8: 0 = per channel
    symmetric: bool = True
    method: str = "rtn"
    keep: tuple[str, ...] = KEEPABLE

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise LmlabError(f"--scheme {self.scheme!r}: choose int8 or int4")
        if self.method not in METHODS:
            raise LmlabError(f"--method {self.method!r}: choose rtn or gptq")
        if self.scheme == "int8" and self.group_size:
            raise LmlabError(
                f"--group-size {self.group_size}: int8 is quantized per output channel; group sizes are for int4"
            )
        if self.scheme == "int4":
            if not self.group_size:
                object.__setattr__(self, "group_size", 128)
            if self.group_size not in GROUP_SIZES:
                raise LmlabError(
                    f"--group-size {self.group_size}: choose one of {', '.join(map(str, GROUP_SIZES))} for int4"
                )
        for k in self.keep:
            if k not in KEEPABLE:
                raise LmlabError(f"--keep {k!r}: choose from embeddings, head (or none)")
        object.__setattr__(self, "keep", tuple(k for k in KEEPABLE if k in self.keep))

    @property
    def bits(self) -> int:
        return SCHEMES[self.scheme]

    @property
    def name(self) -> str:
        group = f" g{self.group_size}" if self.group_size else ""
        return f"{self.scheme}{group} {self.method}{'' if self.symmetric else ' asym'}"

    def to_dict(self) -> dict:
        return {**asdict(self), "keep": list(self.keep)}

    @classmethod
    def from_dict(cls, d: dict) -> QuantSpec:
        try:
            return cls(**{**d, "keep": tuple(d.get("keep", KEEPABLE))})
        except TypeError as e:
            raise LmlabError(f"config.json's quant section is damaged ({e})") from None


# ---------------------------------------------------------------------------------------------
# Codes, scales and zero points


def qparams(w: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scale and zero point for each row of ``w`` (…, g): the codes ``u = round(w/s) + z`` in [0, 2^bits − 1]."""
    top = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scale = w.abs().amax(-1) / (half - 1)
        zero = torch.full_like(scale, float(half))
    else:
        lo, hi = w.amin(-1), w.amax(-1)
        scale = (hi - lo) / top
        zero = (-lo / scale.clamp_min(1e-12)).round().clamp(0, top)
    return scale.clamp_min(1e-12), zero


def codes(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """The integer codes (as floats) of ``w`` (…, g) under ``scale``/``zero`` (…,)."""
    return (w / scale[..., None]).round().add_(zero[..., None]).clamp_(0, 2**bits - 1)


def quantize_weight(w: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest: ``w`` (N, K) → (codes (N, K) float, scales (N, G), zeros (N, G)), G = K/group (int8: 1)."""
    N, K = w.shape
    g = spec.group_size or K
    wg = w.float().reshape(N, K // g, g)
    scale, zero = qparams(wg, spec.bits, spec.symmetric)
    return codes(wg, scale, zero, spec.bits).reshape(N, K), scale, zero


def dequantize_codes(u: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """(codes (N, K), scales (N, G), zeros (N, G)) → the weight (N, K) in the scales' dtype."""
    N, K = u.shape
    G = scale.size(-1) if scale.dim() == 2 else 1
    ug = u.to(scale.dtype).reshape(N, G, K // G)
    return ((ug - zero.reshape(N, G, 1).to(scale.dtype)) * scale.reshape(N, G, 1)).reshape(N, K)


def pack_int4(u: Tensor) -> Tensor:
    """Codes 0..15 (N, K), K even → uint8 (N, K/2): column 2j in the low nibble, 2j+1 in the high."""
    u = u.to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(p: Tensor) -> Tensor:
    """uint8 (N, K/2) → codes (N, K) uint8; the inverse of :func:`pack_int4`."""
    return torch.stack((p & 0xF, p >> 4), dim=-1).reshape(p.size(0), -1)


def check_layer(name: str, layer: nn.Module, spec: QuantSpec) -> None:
    """Refuse a layer the scheme cannot hold: int4 needs its width divisible by the group size."""
    K = layer.in_features if isinstance(layer, nn.Linear) else layer.embedding_dim
    if spec.scheme == "int4" and K % spec.group_size:
        raise LmlabError(
            f"--group-size {spec.group_size} does not divide the input width {K} of {name}; int4 needs groups that "
            f"tile every layer (choose a group size dividing {K}, or int8)"
        )


# ---------------------------------------------------------------------------------------------
# GPTQ


def gptq(w: Tensor, hessian: Tensor, spec: QuantSpec, damp: float = 0.01, block: int = 128) -> Tensor:
    """GPTQ's codes for ``w`` (N, K) given ``hessian`` = Σ xxᵀ (K, K) of its inputs: returns
    (codes (N, K), scales (N, G), zeros (N, G)) in the layout of :func:`quantize_weight`.

    Columns are taken in order; a group's scale and zero point are set from the (already error-corrected)
    weights when the quantizer reaches its first column. int8 is per channel: its scales come from the whole
    row first. ``damp`` × the mean diagonal is added to ``H`` (the paper's λ, 1%)."""
    W = w.detach().float().clone()
    N, K = W.shape
    g = spec.group_size or K
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0  # inputs never nonzero on the calibration sample: nothing to correct with
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * torch.diag(H).mean())
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)  # the rows of H⁻¹ GPTQ needs
    except torch.linalg.LinAlgError:
        raise LmlabError("GPTQ: the calibration Hessian is not positive definite; give more --calib-tokens") from None
    Q = torch.zeros_like(W)
    G = K // g
    scales, zeros = torch.zeros(N, G), torch.zeros(N, G)
    if not spec.group_size:
        scales[:, 0], zeros[:, 0] = qparams(W, spec.bits, spec.symmetric)
    block = max(block, g) if spec.group_size else block  # a group never straddles two blocks
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1 = W[:, i1:i2].clone()
        Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if spec.group_size and col % g == 0:
                scales[:, col // g], zeros[:, col // g] = qparams(W1[:, i : i + g], spec.bits, spec.symmetric)
            s, z = scales[:, col // g], zeros[:, col // g]
            w_col = W1[:, i]
            q = (w_col / s).round().add_(z).clamp_(0, 2**spec.bits - 1)
            Q1[:, i] = q
            err = (w_col - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return Q, scales, zeros


# ---------------------------------------------------------------------------------------------
# Layers


class _Quantized(nn.Module):
    """What a quantized linear layer and a quantized embedding share: the stored tensors and the dequantization."""

    def _store(self, u: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec, dtype: torch.dtype) -> None:
        N, K = u.shape
        self.spec = spec
        if spec.scheme == "int8":
            self.register_buffer("qweight", (u.round() - 128).to(torch.int8))
            self.register_buffer("scales", scale.reshape(N).to(dtype))
            zeros = (zero.reshape(N) - 128).to(torch.int8)
        else:
            self.register_buffer("qweight", pack_int4(u.round()))
            self.register_buffer("scales", scale.reshape(N, -1).to(dtype))
            zeros = zero.reshape(N, -1).to(torch.uint8)
        if not spec.symmetric:
            self.register_buffer("zeros", zeros)
        else:
            self.zeros = None

    def _codes_and_zeros(self) -> tuple[Tensor, Tensor]:
        """(codes (N, K), zero points shaped like the scales) as stored, in integer dtypes."""
        if self.spec.scheme == "int8":
            u = self.qweight.to(torch.int16) + 128
            z = self.zeros.to(torch.int16) + 128 if self.zeros is not None else torch.full_like(u[:, 0], 128)
        else:
            u = unpack_int4(self.qweight)
            z = self.zeros if self.zeros is not None else torch.full(self.scales.shape, 8, dtype=torch.uint8)
        return u, z.to(u.device)

    def dequantize(self) -> Tensor:
        """The float weight (N, K) the stored codes stand for, in the scales' dtype."""
        u, z = self._codes_and_zeros()
        scale = self.scales if self.scales.dim() == 2 else self.scales[:, None]
        return dequantize_codes(u, scale, z.reshape(scale.shape))

    @property
    def weight(self) -> Tensor:  # for code that reads a layer's weight (cross-attention, parameter counts)
        return self.dequantize()


class QuantLinear(_Quantized):
    """A ``Linear`` whose weight is stored as int8 or int4 codes (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        g = spec.group_size or in_features
        zeros = torch.zeros(out_features, in_features // g)
        self._store(torch.zeros(out_features, in_features), zeros + 1, zeros + 2 ** (spec.bits - 1), spec, dtype)
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)
        self.kernel = "reference"
        self._packed: tuple | None = None  # the kernel's tensors, made by prepare()

    @classmethod
    def from_weight(
        cls, layer: nn.Linear, spec: QuantSpec, quantized: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> QuantLinear:
        """``layer`` quantized by round-to-nearest, or with the given (codes, scales, zeros) (GPTQ's)."""
        w = layer.weight.detach()
        u, scale, zero = quantized if quantized is not None else quantize_weight(w, spec)
        out = cls(layer.in_features, layer.out_features, spec, layer.bias is not None, dtype=w.dtype)
        out._store(u.cpu(), scale.cpu(), zero.cpu(), spec, w.dtype)
        if layer.bias is not None:
            out.bias = layer.bias.detach().clone()
        return out.to(w.device)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.name}, {self.kernel}"

    def prepare(self, kernel: str = "auto") -> str:
        """Choose the matmul for the device the layer is on (``auto``) or the ``reference`` path, build what it
        needs, and return its name."""
        dev = self.qweight.device
        self._packed = None
        self.kernel = "reference"
        if kernel == "auto" and dev.type == "cpu":
            if self.spec.scheme == "int8" and hasattr(torch.ops.aten, "_weight_int8pack_mm"):
                zero_term = None
                if self.zeros is not None:  # (u−z)·s = (u−128)·s − (z−128)·s: one extra rank-1 term
                    zero_term = (self.zeros.float() * self.scales.float()).to(torch.bfloat16)
                self._packed = (self.scales.to(torch.bfloat16), zero_term)
                self.kernel = "int8pack"
            elif self.spec.scheme == "int4" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
                u, z = self._codes_and_zeros()
                s = self.scales.float()
                pad = -self.out_features % 16  # the kernel's tiles are 16 output rows: pad with zero rows, cut after
                if pad:
                    u = torch.cat((u, u.new_full((pad, u.size(1)), 8)))
                    z = torch.cat((z, z.new_full((pad, z.size(1)), 8)))
                    s = torch.cat((s, s.new_zeros(pad, s.size(1))))
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32), 1)
                # the kernel computes (u − 8)·s + m per group: m = (8 − z)·s
                sz = torch.stack((s, (8 - z.float()) * s), dim=-1).transpose(0, 1).contiguous()  # (G, N, 2)
                self._packed = (packed, sz.to(torch.bfloat16))
                self.kernel = "int4pack"
        return self.kernel

    def _apply(self, fn, recurse=True):  # .to(device) invalidates the kernel's copies: back to the reference path
        out = super()._apply(fn, recurse)
        if self._packed is not None and self._packed[0].device != self.qweight.device:
            self._packed, self.kernel = None, "reference"
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel == "reference" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if self.kernel == "int8pack":
            scales, zero_term = self._packed
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, scales)
            if zero_term is not None:
                y = y - x2.sum(-1, keepdim=True) * zero_term
        else:
            packed, sz = self._packed
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, self.spec.group_size, sz)
            if y.size(-1) != self.out_features:  # padded to the kernel's tile
                y = y[:, : self.out_features]
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class QuantEmbedding(_Quantized):
    """An ``nn.Embedding`` whose table is stored as codes: a lookup dequantizes only the rows it reads. When
    the model ties its output head to the table, the head (a :class:`QuantLinear`) holds the same tensors."""

    def __init__(self, num_embeddings: int, embedding_dim: int, spec: QuantSpec, dtype=torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        g = spec.group_size or embedding_dim
        zeros = torch.zeros(num_embeddings, embedding_dim // g)
        self._store(torch.zeros(num_embeddings, embedding_dim), zeros + 1, zeros + 2 ** (spec.bits - 1), spec, dtype)

    def share(self, head: QuantLinear) -> None:
        """Use ``head``'s stored tensors as the table (tied embeddings): one copy in memory and in the file."""
        self.qweight, self.scales, self.zeros = head.qweight, head.scales, head.zeros

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        q = self.qweight[flat]
        if self.spec.scheme == "int8":
            u = q.to(torch.int16) + 128
            z = self.zeros[flat].to(torch.int16) + 128 if self.zeros is not None else 128
            rows = (u - z).to(self.scales.dtype) * self.scales[flat, None]
        else:
            u = unpack_int4(q).to(self.scales.dtype)
            s = self.scales[flat]
            G = s.size(-1)
            z = self.zeros[flat].to(s.dtype) if self.zeros is not None else 8.0
            z = z[..., None] if isinstance(z, Tensor) else z
            rows = ((u.reshape(len(flat), G, -1) - z) * s[..., None]).reshape(len(flat), -1)
        return rows.reshape(*ids.shape, self.embedding_dim)


# ---------------------------------------------------------------------------------------------
# Whole models


def targets(model: nn.Module, spec: QuantSpec) -> list[str]:
    """Names of the linear layers (and embedding tables) of ``model`` that ``spec`` quantizes, in module order.
    The output head (``lm_head``, and a task head) and the embedding tables are kept unless ``spec.keep``
    leaves them out; position tables and recurrent cells are always kept (the LSTM/RNN kernels take float
    weights only: a recurrent model is refused by ``lmlab.api.quantize``)."""
    names = []
    for name, m in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(m, nn.Linear):
            if leaf in ("lm_head", "head") and "head" in spec.keep:
                continue
            names.append(name)
        elif isinstance(m, nn.Embedding) and leaf in ("wte", "src_embed", "tgt_embed"):
            if "embeddings" not in spec.keep:
                names.append(name)
    return names


def _tied_head(model: nn.Module, name: str) -> str | None:
    """The name of the embedding table whose weight the linear layer ``name`` shares, if any."""
    layer = model.get_submodule(name)
    for other, m in model.named_modules():
        if isinstance(m, nn.Embedding) and m.weight is layer.weight:
            return other
    return None


def quantize_model(
    model: nn.Module, spec: QuantSpec, quantized: dict[str, tuple[Tensor, Tensor, Tensor]] | None = None
) -> list[str]:
    """Replace the target layers of ``model`` (in place) by quantized ones: round-to-nearest, or the
    (codes, scales, zeros) given per layer name in ``quantized`` (GPTQ's). An embedding table tied to a
    quantized head shares the head's codes when embeddings are quantized too, and stays a float table
    otherwise. Returns the names quantized."""
    names = targets(model, spec)
    for name in names:
        check_layer(name, model.get_submodule(name), spec)
    done = []
    heads: dict[str, QuantLinear] = {}
    for name in names:
        m = model.get_submodule(name)
        if isinstance(m, nn.Linear):
            tied = _tied_head(model, name)
            q = QuantLinear.from_weight(m, spec, (quantized or {}).get(name))
            if tied is not None:
                heads[tied] = q
            _replace(model, name, q)
            done.append(name)
    for name in names:
        m = model.get_submodule(name)
        if isinstance(m, nn.Embedding):
            if name in heads:
                e = QuantEmbedding(m.num_embeddings, m.embedding_dim, spec, dtype=m.weight.dtype)
                e.share(heads[name])
            else:
                lin = nn.Linear(m.embedding_dim, m.num_embeddings, bias=False)
                lin.weight = m.weight
                q = QuantLinear.from_weight(lin, spec, (quantized or {}).get(name))
                e = QuantEmbedding(m.num_embeddings, m.embedding_dim, spec, dtype=m.weight.dtype)
                e.share(q)
            _replace(model, name, e.to(m.weight.device))
            done.append(name)
    model.quant_spec = spec
    return done


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def prepare(model: nn.Module, kernel: str = "auto") -> dict[str, int]:
    """Choose every quantized layer's matmul for the device it is on (``auto``: the packed CPU kernels on a
    CPU, the reference path elsewhere) or force the ``reference`` path; returns {kernel: layers}."""
    if kernel not in KERNELS:
        raise LmlabError(f"quantized kernel {kernel!r}: choose auto or reference")
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QuantLinear):
            k = m.prepare(kernel)
            counts[k] = counts.get(k, 0) + 1
    return counts


def quantized_layers(model: nn.Module) -> Iterable[tuple[str, _Quantized]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, _Quantized))


@torch.no_grad()
def hessians(model: nn.Module, names: list[str], batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """Σ xxᵀ (K, K) of the inputs of each linear layer in ``names`` over the token batches (B, T), from one
    forward pass of ``model`` per batch (GPTQ's calibration statistics; float64 sums, returned as float32)."""
    sums: dict[str, Tensor] = {}
    hooks = []

    def hook(name: str):
        def pre(_module, args):
            x = args[0].detach().reshape(-1, args[0].size(-1)).double()
            sums[name] = sums.get(name, 0) + x.T @ x

        return pre

    for name in names:
        m = model.get_submodule(name)
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {n: h.float() for n, h in sums.items()}


def check_file(model: nn.Module, path) -> None:
    """Refuse a weights file whose quantized tensors are not what the run's scheme makes: a missing tensor, or
    one of another dtype or shape (``load_state_dict`` would convert a float tensor into integer codes
    without a word). A truncated or unreadable file is refused too."""
    from safetensors import SafetensorError, safe_open

    wanted = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in ("qweight", "scales", "zeros")}
    spec = getattr(model, "quant_spec", None)
    scheme = spec.name if spec is not None else "the run's scheme"
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            for name, t in wanted.items():
                if name not in keys:
                    if any(t.data_ptr() == other.data_ptr() and o in keys for o, other in wanted.items()):
                        continue  # a tied table saved once under the head's name
                    raise LmlabError(f"{path} has no {name}: it was not written for {scheme}")
                got = f.get_slice(name)
                dtype, shape = got.get_dtype(), list(got.get_shape())
                want = str(t.dtype).removeprefix("torch.")
                if _SAFE_DTYPES.get(dtype) != want or shape != list(t.shape):
                    raise LmlabError(
                        f"{path}: {name} is {dtype} {shape}, but {scheme} stores {want} {list(t.shape)}; the file "
                        "does not match the scheme in config.json"
                    )
    except (SafetensorError, OSError) as e:
        raise LmlabError(
            f"{path} cannot be read ({str(e).splitlines()[0]}); the file is damaged or truncated"
        ) from None


_SAFE_DTYPES = {"I8": "int8", "U8": "uint8", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
