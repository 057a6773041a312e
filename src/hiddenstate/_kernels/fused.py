"""The fused backend: each LSTM layer's time loop in one call into a small C kernel.

A small recurrent model on a CPU is bound by op dispatch, not arithmetic:
the seed model (two LSTM(8) layers, batch 10) does ~5k multiply-adds per step, under a
microsecond of work, while oneDNN's RNN kernel costs several microseconds per step and the
backward twice that. ``model.rnn.set_backend("fused")`` runs each LSTM layer over a whole
chunk in one call into a small C kernel (``_fused_lstm.c``, built with the system C compiler on
first use, about a second, and cached under ``~/.cache/hiddenstate``; see
:mod:`hiddenstate._kernels.cache` for when a cached object is trusted)::

    forward, one call per layer    for t: gates = x_t W_ih^T + h_{t-1} W_hh^T + b; c_t, h_t
    backward, one call per layer   for t (reversed): d gates, d h_{t-1}, d c_{t-1}, d x_t
                                   then d W_ih, d W_hh, d b summed over every step

The per-step products run in register-blocked loops and the activations through a vectorised
exp, so torch sees one autograd node per layer and nothing per step. It computes the same
function as ``nn.LSTM`` (to ~1e-6 in float32), returns outputs with the same memory layout (so
dropout between layers draws the same masks), and is CPU-only, for LSTM layers in float32 or
float64. It pays off for hidden sizes up to about 32; above that oneDNN's blocked GEMMs win
(see docs/performance.md). The default backend, ``"torch"``, is one cuDNN/oneDNN kernel call
per layer (on the CPU, one per run of same-sized layers).

>>> import torch, hiddenstate as hs
>>> model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(8)])
>>> x = torch.randn(10, 96, 2)
>>> y_torch, _ = model(x)
>>> model.rnn.set_backend("fused")  # doctest: +SKIP
>>> torch.allclose(model(x)[0], y_torch, atol=1e-5)  # doctest: +SKIP
True

"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hiddenstate._kernels.cache import cache_dir, install, verified
from hiddenstate.errors import ConfigError

__all__ = ["build_kernel", "check_fusable", "fusable", "fused_available", "fused_lstm", "lstm_pointwise"]

_SOURCE = Path(__file__).with_name("_fused_lstm.c")
_FLAGS = ("-O3", "-fno-trapping-math", "-std=c99", "-shared", "-fPIC")
_ARCH_FLAGS = ("-march=native",)  # AVX2/AVX-512 on the machine that builds (and runs) it


def _cache_dir() -> Path:
    root = os.environ.get("HIDDENSTATE_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hiddenstate"


def _cpu_id() -> str:
    """What the compiled kernel is specific to: ``-march=native`` ties it to this CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _compile(compiler: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        error = ""
        for extra in (_ARCH_FLAGS, ()):  # not every compiler knows -march=native
            cmd = [*compiler, *_FLAGS, *extra, "-o", tmp, str(_SOURCE)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                install(Path(tmp), target)  # the sha256 record, then the object, each by one rename
                return
            error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ConfigError(f"the fused backend could not build {_SOURCE.name} with {' '.join(compiler)}: {error}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@functools.cache
def build_kernel() -> ctypes.CDLL:
    """Compile ``_fused_lstm.c`` (once per source, compiler and CPU; cached) and load it.

    The cache directory must be one only this user can write, and the object must match the
    sha256 recorded when it was built (see :mod:`hiddenstate._kernels.cache`); otherwise it is
    rebuilt, in a private directory when the cache is unsafe. Raises ConfigError when no C
    compiler is found or the build fails.
    """
    cc = shlex.split(os.environ.get("CC") or "")  # CC may be a command with arguments: "ccache gcc"
    name = cc[0] if cc else next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), "cc")
    compiler = shutil.which(name)
    if compiler is None:
        raise ConfigError(
            f"the fused backend builds a small C kernel on first use and found no C compiler ({name!r}; "
            "set CC to one); use backend 'torch' instead"
        )
    source = _SOURCE.read_bytes()
    command = [compiler, *cc[1:]]
    key = hashlib.sha256(
        b"\0".join([source, " ".join(command).encode(), " ".join(_FLAGS).encode(), _cpu_id().encode()])
    )
    directory, private = cache_dir(_cache_dir())  # a private one when the cache could hold planted code
    target = directory / f"fused_lstm-{key.hexdigest()[:16]}.so"
    try:
        for _ in range(3):  # bounded: a concurrent build may replace the object just after this one
            if verified(target):
                break
            _compile(command, target)
        else:
            if not verified(target):
                raise ConfigError(f"the fused kernel {target} does not match its sha256 record after a rebuild")
        lib = ctypes.CDLL(str(target))
    except OSError as e:  # a cache on a noexec mount, a directory in the object's place, a full disk
        raise ConfigError(
            f"the fused kernel {target} could not be built or loaded ({e}); use backend 'torch'"
        ) from None
    finally:
        if private:  # loaded (or failed): nothing of it is left for anyone to reuse
            shutil.rmtree(directory, ignore_errors=True)
    ptr, size = ctypes.c_void_p, ctypes.c_long
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"hs_lstm_forward_{suffix}")
        fwd.argtypes = [size] * 4 + [ptr, size, size] + [ptr] * 8 + [size, ptr, size]
        fwd.restype = ctypes.c_int
        bwd = getattr(lib, f"hs_lstm_backward_{suffix}")
        bwd.argtypes = [size] * 4 + [ptr, size, size] + [ptr] * 8 + [size, size] + [ptr] * 3 + [size] * 2 + [ptr] * 3
        bwd.restype = ctypes.c_int
        pw = getattr(lib, f"hs_lstm_pointwise_{suffix}")
        pw.argtypes = [size, size, ptr, size, ptr, size, ptr, size]
        pw.restype = None
        flat = getattr(lib, f"hs_lstm_pointwise_flat_{suffix}")
        flat.argtypes = [size, size, ptr, ptr, size, ptr, size]
        flat.restype = None
        real = ctypes.c_float if suffix == "f32" else ctypes.c_double
        params = getattr(lib, f"hs_studentt_params_{suffix}")
        params.argtypes = [size, ptr, ptr, ptr, real]
        params.restype = None
        draw = getattr(lib, f"hs_studentt_draw_{suffix}")
        draw.argtypes = [size, ptr, ptr, ptr, ptr, ptr, real, real, ptr]
        draw.restype = None
    return lib


def fused_available() -> bool:
    """True when the fused kernel is built or can be built here."""
    try:
        build_kernel()
    except ConfigError:
        return False
    return True


@functools.cache
def kernel_ready() -> bool:
    """:func:`fused_available`, asked once per process: the sampling loop's fast paths ask it at
    every call, and a build that fails (no compiler, a compiler error) is not retried."""
    return fused_available()


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_WEIGHT_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _check(x: torch.Tensor, w_hh: torch.Tensor) -> str:
    if x.device.type != "cpu":
        raise ConfigError(
            f"the fused backend runs on the CPU, got x on {x.device}; on a GPU the default "
            "backend 'torch' runs cuDNN's kernel"
        )
    suffix = _SUFFIX.get(x.dtype)
    if suffix is None or w_hh.dtype != x.dtype:
        raise ConfigError(
            f"the fused backend takes float32 or float64 (x and weights alike), got x {x.dtype}, weights {w_hh.dtype}"
        )
    return suffix


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with contiguous features (the kernel reads batch and time through strides)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _forward(
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
    keep: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the time loop; ``keep`` stores every step's c and gates for the backward pass.

    Returns ``hseq (steps, batch, hidden)``, ``cseq`` and ``acts`` (time-major)."""
    w_ih, w_hh, b_ih, b_hh = weights
    fn = getattr(build_kernel(), f"hs_lstm_forward_{_check(x, w_hh)}")
    batch, steps, n_in = x.shape
    hidden = w_hh.shape[1]
    hseq = x.new_empty(steps, batch, hidden)
    cseq = x.new_empty(steps if keep else 1, batch, hidden)
    acts = x.new_empty(steps if keep else 1, batch, 4 * hidden)
    status = fn(
        batch, steps, n_in, hidden, x.data_ptr(), x.stride(0), x.stride(1),
        w_ih.data_ptr(), w_hh.data_ptr(), b_ih.data_ptr(), b_hh.data_ptr(), h0.data_ptr(), c0.data_ptr(),
        hseq.data_ptr(), cseq.data_ptr(), batch * hidden if keep else 0,
        acts.data_ptr(), batch * 4 * hidden if keep else 0,
    )  # fmt: skip
    if status:
        raise MemoryError("the fused LSTM kernel could not allocate its work buffers")
    return hseq, cseq, acts


class _LSTMLayer(torch.autograd.Function):
    """One LSTM layer over a whole chunk: one kernel call forward, one backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hseq, cseq, acts = _forward(x, h0, c0, (w_ih, w_hh, b_ih, b_hh), keep=True)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh)
        ctx.inner = (hseq, cseq, acts)
        # Outputs are views of the time-major buffers, laid out exactly like nn.LSTM's.
        return hseq.transpose(0, 1), hseq[-1], cseq[-1]

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor, d_hn: torch.Tensor, d_cn: torch.Tensor) -> tuple[Any, ...]:
        x, h0, c0, w_ih, w_hh = ctx.saved_tensors
        hseq, cseq, acts = ctx.inner
        steps, batch, hidden = hseq.shape
        fn = getattr(build_kernel(), f"hs_lstm_backward_{_SUFFIX[hseq.dtype]}")
        d_out = _rows(d_out)  # (batch, steps, hidden), any batch/time strides
        dh = d_hn.clone(memory_format=torch.contiguous_format)  # in: d h_n; out: d h0
        dc = d_cn.clone(memory_format=torch.contiguous_format)  # in: d c_n; out: d c0
        dx = torch.empty_like(x, memory_format=torch.contiguous_format) if ctx.needs_input_grad[0] else None
        d_w_ih, d_w_hh, d_b = torch.empty_like(w_ih), torch.empty_like(w_hh), hseq.new_empty(4 * hidden)
        status = fn(
            batch, steps, x.shape[2], hidden, x.data_ptr(), x.stride(0), x.stride(1),
            w_ih.data_ptr(), w_hh.data_ptr(), h0.data_ptr(), c0.data_ptr(),
            hseq.data_ptr(), cseq.data_ptr(), acts.data_ptr(), d_out.data_ptr(), d_out.stride(1), d_out.stride(0),
            dh.data_ptr(), dc.data_ptr(), None if dx is None else dx.data_ptr(), steps * x.shape[2], x.shape[2],
            d_w_ih.data_ptr(), d_w_hh.data_ptr(), d_b.data_ptr(),
        )  # fmt: skip
        if status:
            raise MemoryError("the fused LSTM kernel could not allocate its work buffers")
        return dx, dh, dc, d_w_ih, d_w_hh, d_b, d_b.clone()


def fused_lstm(
    cell: nn.LSTM, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``cell(x, hx)`` for a one-layer, ``batch_first`` ``nn.LSTM``, through the fused kernel.

    ``x`` is ``(batch, steps, input)``; ``hx`` is ``(h0, c0)``, each ``(1, batch, hidden)``, or
    None for zeros. Returns ``(out (batch, steps, hidden), (h_n, c_n))`` like ``nn.LSTM``.
    """
    # the kernel reads weights row-major; a transposed view (load_state_dict(assign=True), functional_call) is copied
    weights: tuple[torch.Tensor, ...] = tuple(getattr(cell, n).contiguous() for n in _WEIGHT_NAMES)
    batch = x.shape[0]
    if hx is None:
        h0 = c0 = x.new_zeros(batch, cell.hidden_size)
    else:  # under CPU autocast a carried state may be half precision; the kernel reads x's dtype
        h0, c0 = hx[0][0].to(x.dtype).contiguous(), hx[1][0].to(x.dtype).contiguous()  # (batch, hidden)
    x = _rows(x)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or h0.requires_grad or c0.requires_grad or any(w.requires_grad for w in weights)
    )
    if needs_grad:
        out, h_n, c_n = _LSTMLayer.apply(x, h0, c0, *weights)
    else:
        hseq, cseq, _ = _forward(x, h0, c0, weights, keep=False)
        out, h_n, c_n = hseq.transpose(0, 1), hseq[-1], cseq[-1]
    return out, (h_n.unsqueeze(0), c_n.unsqueeze(0))


def lstm_pointwise(gates: torch.Tensor, c: torch.Tensor, h_out: torch.Tensor) -> None:
    """One LSTM step after its products, in place: ``gates`` ``(rows, 4H)`` holds the
    pre-activations ``x W_ih^T + h W_hh^T + b`` and gets the activations, ``c`` ``(rows, H)`` goes
    from ``c_{t-1}`` to ``c_t``, ``h_out`` ``(rows, H)`` gets ``h_t``. The products stay with the
    BLAS (which wins for wide layers and many rows) and the activations run in one pass of the
    kernel instead of a dozen elementwise ops. CPU tensors of one float dtype, each row
    contiguous (rows may be strided: ``h_out`` can be a column slice of a larger buffer); no
    autograd."""
    pointwise_step(c, h_out)(gates)


def pointwise_step(c: torch.Tensor, h_out: torch.Tensor, g_doubled: bool = False) -> Any:
    """:func:`lstm_pointwise` on ``c`` and ``h_out``, checked once: the returned ``step(gates)``
    runs the kernel pass on their memory as it is then, with ``gates`` of that call (checked at
    every call: a fresh product's output each step). For a loop that reuses its state buffers
    step after step (the sampling loop); ``c`` and ``h_out`` must keep their storage (in-place
    writes only) while the function is in use.

    ``g_doubled``: the gates' g quarter holds twice its pre-activations (the product's g weights
    and bias scaled by 2, which is exact) and ``gates`` is contiguous; every gate is then a
    sigmoid, in one flat loop, about 15% faster at 700 x 160, with the same float32 results to
    the bit."""
    rows, hidden = c.shape
    suffix = _SUFFIX.get(c.dtype)
    if (
        suffix is None
        or any(t.dtype != c.dtype or t.device.type != "cpu" or t.dim() != 2 or t.stride(1) != 1 for t in (c, h_out))
        or tuple(h_out.shape) != (rows, hidden)
    ):
        raise ConfigError(
            "lstm_pointwise: expected CPU float32/float64 c and h_out (rows, H) with contiguous rows, got "
            f"{[(tuple(t.shape), t.dtype, t.stride()) for t in (c, h_out)]}"
        )
    kernel = getattr(build_kernel(), f"hs_lstm_pointwise_{'flat_' if g_doubled else ''}{suffix}")
    fn = functools.partial(kernel, rows, hidden)
    state = (c.data_ptr(), c.stride(0), h_out.data_ptr(), h_out.stride(0))
    shape, dtype, row = (rows, 4 * hidden), c.dtype, 4 * hidden if g_doubled else None

    def step(gates: torch.Tensor, _keep: tuple[torch.Tensor, ...] = (c, h_out)) -> None:  # _keep: what `state` names
        if (
            gates.shape != shape
            or gates.stride(1) != 1
            or (row is not None and gates.stride(0) != row)
            or gates.dtype != dtype
            or gates.device.type != "cpu"
        ):
            raise ConfigError(
                f"lstm_pointwise: expected CPU {dtype} gates {shape} with contiguous rows"
                f"{' (the whole tensor contiguous)' if row else ''}, got "
                f"{(tuple(gates.shape), gates.dtype, gates.stride())}"
            )
        if row is None:
            fn(gates.data_ptr(), gates.stride(0), *state)
        else:
            fn(gates.data_ptr(), *state)

    return step


def studentt_draw(
    raw: torch.Tensor, scale: torch.Tensor | None, spread: float, min_scale: float, generator: Any
) -> torch.Tensor | None:
    """One Student-t draw per output, ``(n, k)``, from the head's ``raw`` ``(n, 3k)`` (loc, scale,
    df): torch's softplus, gamma and normal draws, and the arithmetic between them in two kernel
    passes (see ``_fused_lstm.c``); None where the kernel cannot take these tensors (then the
    caller draws with torch's ops)."""
    suffix = _SUFFIX.get(raw.dtype)
    if suffix is None or raw.device.type != "cpu" or raw.dim() != 2 or raw.shape[1] % 3:
        return None
    n, k = raw.shape[0], raw.shape[1] // 3
    if scale is not None and (
        scale.dtype != raw.dtype
        or scale.device.type != "cpu"
        or tuple(scale.shape) != (n, k)
        or not scale.is_contiguous()
    ):
        return None
    if not kernel_ready():
        return None
    lib = build_kernel()
    p = raw.unflatten(-1, (3, k)).movedim(-2, 0).contiguous()  # (3, n, k): loc, scale, df
    loc, sp = p[0], torch.nn.functional.softplus(p[1:])  # fresh and contiguous, (n, k) and (2, n, k)
    getattr(lib, f"hs_studentt_params_{suffix}")(
        n * k, loc.data_ptr(), sp.data_ptr(), None if scale is None else scale.data_ptr(), min_scale
    )
    gamma = torch._standard_gamma(sp[1], generator=generator)
    eps = torch.randn((n, k), dtype=raw.dtype, generator=generator)
    out = torch.empty_like(loc)
    getattr(lib, f"hs_studentt_draw_{suffix}")(
        n * k, loc.data_ptr(), sp[0].data_ptr(), sp[1].data_ptr(), gamma.data_ptr(), eps.data_ptr(), spread,
        torch.finfo(raw.dtype).tiny, out.data_ptr(),
    )  # fmt: skip
    return out


def fusable(cell: nn.Module) -> bool:
    """Whether the kernel can run ``cell``: a one-layer ``nn.LSTM`` with biases and no projection."""
    return isinstance(cell, nn.LSTM) and cell.num_layers == 1 and cell.bias and not cell.proj_size


def check_fusable(cells: nn.ModuleList) -> None:
    """Raise ConfigError unless every layer can run on the fused backend (and it builds)."""
    for i, cell in enumerate(cells):
        if not fusable(cell):
            kind = type(cell).__name__.lower()
            raise ConfigError(
                f"layer {i} ({kind}, hidden {cell.hidden_size}): the fused backend runs lstm layers only; "
                "use backend 'torch' for this stack"
            )
    build_kernel()
