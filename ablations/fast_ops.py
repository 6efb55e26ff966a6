"""The few primitives the encoder runs differently from stock PyTorch, for speed, with the same math.

- `linear` / `Linear`: on a CPU with AVX-512, in fp32, the three GEMMs of a linear layer (forward, input
  gradient, weight gradient) go through oneDNN instead of torch's default BLAS. On AMD CPUs MKL's sgemm takes
  its AVX2 path even where AVX-512 is available; oneDNN dispatches on the CPU's instruction set and runs the
  same fp32 GEMM faster there. That edge is AVX-512's: on an AVX2-only CPU oneDNN's weight gradients are
  slower than MKL's (oneDNN also first copies the transposed operand), so there it is `F.linear`. The figures:
  docs/speed.md, "Where it comes from". Results are fp32 GEMMs either way (no reduced-precision math mode).
  Under autocast, on GPUs, under torch.compile (which picks its own GEMMs), or where oneDNN is missing, it is
  `F.linear`.
- `dropout` / `dropout_add`: on the CPU a mask from 16-bit slices of SplitMix64 random words (torch's
  Bernoulli sampler costs as much as a matmul of the same size), and the residual add fused with it.
- `residual_stream`: under CPU autocast the residual stream is carried in the autocast dtype.
- `cross_entropy_and_argmax`: the MLM loss from one softmax, whose output becomes the gradient in place;
  `F.cross_entropy` runs an exp over the (N, V) logits again in its backward, after zero-filling a one-hot.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


# ----------------------------------------------------------------------------------------- linear


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear_pays(cpu_capability: str) -> bool:
    """Whether oneDNN's GEMMs beat torch's default BLAS here: only with AVX-512 (see the module docstring).
    `cpu_capability` is torch.backends.cpu.get_cpu_capability() (ATEN_CPU_CAPABILITY caps it too)."""
    return cpu_capability.upper().startswith("AVX512")


ONEDNN_LINEAR = _onednn_linear_available() and onednn_linear_pays(torch.backends.cpu.get_cpu_capability())


def _onednn_mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for 2-D fp32 a (M, K) and b (N, K), by oneDNN's inner product (the op torch.compile's CPU
    backend uses for linear layers). A strided (e.g. transposed) b is read in place; a strided a is first
    copied to a contiguous tensor (by torch, inside the op)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def _weight_gradient(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad.T @ x (N, K) from grad (M, N) and x (M, K). oneDNN's inner product is faster with the wider
    operand as its 'weight' (measured: 1.4x for 256 x 1024), so the product is taken in that orientation."""
    if x.shape[1] > grad.shape[1]:
        return _onednn_mm_nt(grad.t(), x.t())
    return _onednn_mm_nt(x.t(), grad.t()).t()


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_mm_nt(flat_grad, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_gradient(flat_grad, x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with its GEMMs on oneDNN for fp32 on the CPU (see the module docstring)."""
    if (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.numel()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters, names and initialisation) that runs through `linear`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


# ---------------------------------------------------------------------------------------- dropout


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# SplitMix64 (Steele, Lea & Flood, OOPSLA 2014; Java's SplittableRandom): word i is mix(key + i * GAMMA).
_GAMMA, _MIX1, _MIX2 = (_signed64(v) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def random_words(count: int) -> torch.Tensor:
    """`count` random 64-bit words (int64) on the CPU: SplitMix64 over counters, in vectorised passes that
    use both cores (torch's mt19937 draws one word at a time on one: 2.8x slower, measured). The key is
    drawn from torch's generator, so seeding still reproduces a run."""
    key = torch.empty((), dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    words = torch.arange(count, dtype=torch.int64).mul_(_GAMMA).add_(key)  # int64 arithmetic wraps mod 2^64
    scratch = torch.empty_like(words)
    for shift, multiplier in ((30, _MIX1), (27, _MIX2), (31, None)):
        torch.bitwise_right_shift(words, shift, out=scratch)
        words.bitwise_xor_(scratch.bitwise_and_((1 << (64 - shift)) - 1))  # the mask makes >> a logical shift
        if multiplier is not None:
            words.mul_(multiplier)
    return words


def keep_mask(shape, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU dropout mask, 1 = keep, in `dtype` (that of the tensor it multiplies: a bool mask is cast
    again by every multiply and its backward). Four 16-bit uniforms come from each random word, so p is
    exact to 1/65536; torch's Bernoulli sampler would cost as much as a matmul of the same size."""
    numel = math.prod(shape)
    uniform16 = random_words((numel + 3) // 4).view(torch.int16)[:numel].view(shape)
    return torch.ge(uniform16, -32768 + round(p * 65536), out=torch.empty(shape, dtype=dtype))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: the cheap mask on the CPU, torch's own (fused) dropout elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return x * keep_mask(x.shape, p, x.dtype) * (1.0 / (1.0 - p))


def dropout_add(residual: torch.Tensor, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """residual + dropout(x). On the CPU one addcmul does the mask, the 1/(1-p) scale and the add in a
    single pass over the activations (three otherwise, and as many backwards)."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return residual + dropout(x, p, training)
    return torch.addcmul(residual, x, keep_mask(x.shape, p, x.dtype), value=1.0 / (1.0 - p))


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)


def residual_stream(x: torch.Tensor) -> torch.Tensor:
    """The embeddings' output as the residual stream the blocks carry. CPU autocast keeps LayerNorm in its
    input's dtype, so an fp32 residual stream would be cast to bf16 again at every Linear (q, k and v each)
    and every gradient cast back. Carrying the stream in the autocast dtype, as bf16 training usually does,
    removes those copies; weights, optimizer state and losses stay fp32. (On GPUs autocast runs LayerNorm in
    fp32 anyway.)"""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return x.to(torch.get_autocast_dtype("cpu"))
    return x


# ---------------------------------------------------------------------------------- cross-entropy


class _SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels):
        probs = torch.softmax(logits, -1)
        top_prob, top = probs.max(-1)
        # log-sum-exp = x_top - log p_top: p_top >= 1/V never underflows, unlike p at the label
        log_normaliser = logits.gather(1, top[:, None]).squeeze(1) - top_prob.log()
        loss = (log_normaliser - logits.gather(1, labels[:, None]).squeeze(1)).mean()
        ctx.mark_non_differentiable(top)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(probs, labels)
            ctx.consumed = False
        return loss, top

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _):
        if ctx.consumed:
            raise RuntimeError("cross_entropy_and_argmax's backward reuses its saved softmax: it runs once")
        ctx.consumed = True
        probs, labels = ctx.saved_tensors
        # d mean(lse - x_label) / dx = (softmax - onehot) / N, written over the saved softmax
        rows = torch.arange(labels.numel(), device=labels.device)
        probs.index_put_((rows, labels), torch.tensor(-1.0, dtype=probs.dtype, device=probs.device), accumulate=True)
        return probs.mul_(grad_loss / labels.numel()), None


def cross_entropy_and_argmax(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F.cross_entropy(logits, labels) (mean over N rows, every label valid) and logits.argmax(-1), for fp32
    logits (N, V). One softmax pass serves the loss, the argmax (over the probabilities, the same order) and,
    overwritten in place, the gradient, so its backward may run once (no retain_graph)."""
    return _SoftmaxCrossEntropy.apply(logits, labels)
