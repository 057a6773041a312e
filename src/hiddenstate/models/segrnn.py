"""SegRNN: a GRU over segments of the input window, decoding whole output segments at once.

The model of Lin et al., "SegRNN: Segment Recurrent Neural Network for Long-Term Time Series
Forecasting" (2023), built on this library's :class:`~hiddenstate.model.StackedRNN` so its state
is an ordinary :class:`~hiddenstate.state.State`::

    window (batch, 96, vars) ── normalise (subtract last value / RevIN)
        │  split each variable's lane into segments of seg_len steps
        ▼
    segments (batch*vars, 96/seg_len, seg_len) ── Linear+ReLU ──► GRU ──► state h (batch*vars, d)
                                                                          │
    decoder "pmf":    for each output segment j: GRU step from h on [pos_j ; channel_c] ─► Linear ─► seg
    decoder "rmf":    roll the GRU forward, feeding each predicted segment back in
    decoder "linear": one Linear from h to the whole horizon

Every option is a switch so that each can be measured alone (see docs/benchmarks.md):

* ``norm``: ``"last"`` (subtract each lane's last value), ``"revin"`` (per-window mean/std) or
  ``"none"``;
* ``channels``: ``"independent"`` (each variable is its own lane, weights shared, a learned
  channel embedding tells them apart) or ``"mixed"`` (one lane sees all variables);
* ``seg_len``: 1 is a plain step-by-step GRU;
* ``context``: a second, slow GRU that runs over the *whole* history before the window in
  segments (in the globally scaled units, so it can be carried across windows as a stream) and
  sets the encoder's initial state. Its state is the carried state of the "stateful" protocol.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.model import GRU, StackedRNN, register_model_kind
from hiddenstate.state import LayerState, State, StateSpec

__all__ = ["SegRNN"]

_NORMS = ("last", "revin", "none")
_CHANNELS = ("independent", "mixed")
_DECODERS = ("pmf", "rmf", "linear")


@register_model_kind("segrnn")
class SegRNN(nn.Module):
    """A segment-recurrent GRU forecaster; see the module docstring for the picture.

    Args:
        n_vars: variables per step (in = out; ETT has 7).
        input_len: window length L; a multiple of ``seg_len``.
        horizon: forecast length H; a multiple of ``seg_len``.
        seg_len: steps per segment.
        d_model: GRU width.
        dropout: before the output projection.
        norm, channels, decoder: see the module docstring.
        context: 0 for none, else the width of the slow context GRU (the "stateful" protocol).

    ``forward(x, context=None) -> (y, State)``: ``x`` is ``(batch, L, n_vars)`` in globally scaled
    units, ``y`` is ``(batch, H, n_vars)``; the State is the encoder's final state, one row per
    lane (``batch*n_vars`` rows when channel-independent). ``context`` is the context GRU's State
    for the history before the window (see :meth:`context_states`). With a context GRU, ``x`` may
    hold whole segments of history before the L-step window, ``(batch, k*seg_len + L, n_vars)``:
    they advance ``context`` (zeros when None) with gradients before the window is encoded, which
    is how training backpropagates through the last ``k`` segments of the carried state.

    >>> m = SegRNN(7, input_len=96, horizon=96, seg_len=48, d_model=16)
    >>> y, s = m(torch.zeros(4, 96, 7))
    >>> tuple(y.shape), s.batch_size
    ((4, 96, 7), 28)
    """

    def __init__(
        self,
        n_vars: int,
        input_len: int = 96,
        horizon: int = 96,
        seg_len: int = 48,
        d_model: int = 256,
        dropout: float = 0.0,
        norm: str = "last",
        channels: str = "independent",
        decoder: str = "pmf",
        context: int = 0,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("norm", norm, _NORMS),
            ("channels", channels, _CHANNELS),
            ("decoder", decoder, _DECODERS),
        ):
            if value not in allowed:
                raise ConfigError(f"SegRNN {name}={value!r}; expected one of {', '.join(allowed)}")
        for what, steps in (("input_len", input_len), ("horizon", horizon)):
            if seg_len < 1 or steps < 1 or steps % seg_len:
                raise ConfigError(f"SegRNN {what}={steps} must be a positive multiple of seg_len={seg_len}")
        if n_vars < 1 or d_model < 2 or context < 0:
            raise ConfigError(
                f"SegRNN needs n_vars >= 1, d_model >= 2, context >= 0; got {n_vars}, {d_model}, {context}"
            )
        self.n_vars, self.input_len, self.horizon, self.seg_len = n_vars, input_len, horizon, seg_len
        self.d_model, self.dropout_p, self.norm, self.channels = d_model, dropout, norm, channels
        self.decoder, self.context = decoder, context
        ci = channels == "independent"
        width = seg_len if ci else seg_len * n_vars  # values per segment of one lane
        self.embed = nn.Sequential(nn.Linear(width, d_model), nn.ReLU())
        self.rnn = StackedRNN(d_model, [GRU(d_model)])
        self.out_segments = horizon // seg_len
        if decoder == "pmf":
            half = d_model // 2 if ci else d_model
            self.pos_emb = nn.Parameter(torch.randn(self.out_segments, half))
            self.channel_emb = nn.Parameter(torch.randn(n_vars, d_model - half)) if ci else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(
            d_model, horizon if decoder == "linear" and ci else horizon * n_vars if decoder == "linear" else width
        )
        if context:
            self.ctx_embed = nn.Sequential(nn.Linear(width, context), nn.ReLU())
            self.ctx_rnn = StackedRNN(context, [GRU(context)])
            self.ctx_to_state = nn.Linear(context, d_model)

    # -- configuration ----------------------------------------------------------------------

    @property
    def state_spec(self) -> StateSpec:
        """The encoder's state: one GRU layer of ``d_model``."""
        return self.rnn.state_spec

    @property
    def context_spec(self) -> StateSpec | None:
        """The carried context state's spec, or None without a context GRU."""
        return self.ctx_rnn.state_spec if self.context else None

    @property
    def input_size(self) -> int:
        """Variables per input step (the generic forecasting code reads this)."""
        return self.n_vars

    @property
    def output_size(self) -> int:
        return self.n_vars

    @property
    def lanes(self) -> int:
        """Lanes per window: one per variable when channel-independent, else one."""
        return self.n_vars if self.channels == "independent" else 1

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (not its weights), JSON-safe."""
        return {
            "kind": "segrnn",
            "n_vars": self.n_vars,
            "input_len": self.input_len,
            "horizon": self.horizon,
            "seg_len": self.seg_len,
            "d_model": self.d_model,
            "dropout": self.dropout_p,
            "norm": self.norm,
            "channels": self.channels,
            "decoder": self.decoder,
            "context": self.context,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SegRNN:
        args = {k: v for k, v in config.items() if k != "kind"}
        try:
            return cls(**args)
        except TypeError as e:
            raise ConfigError(f"segrnn config {sorted(args)} does not fit SegRNN: {e}") from None

    # -- lanes ------------------------------------------------------------------------------

    def _to_segments(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, steps, vars)`` -> ``(batch*lanes, steps/seg_len, width)``."""
        b, t, v = x.shape
        n = t // self.seg_len
        if self.channels == "independent":
            return x.permute(0, 2, 1).reshape(b * v, n, self.seg_len)  # (batch*vars, segs, seg_len)
        return x.reshape(b, n, self.seg_len * v)  # (batch, segs, seg_len*vars), step-major

    def _from_segments(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """``(batch*lanes, segs, width)`` -> ``(batch, segs*seg_len, vars)``."""
        if self.channels == "independent":
            return y.reshape(batch, self.n_vars, -1).permute(0, 2, 1)  # (batch, H, vars)
        return y.reshape(batch, -1, self.n_vars)

    # -- the model --------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, context: State | None = None) -> tuple[torch.Tensor, State]:
        before = x.shape[1] - self.input_len if x.dim() == 3 else 0  # history rows ahead of the window
        if x.dim() != 3 or x.shape[2] != self.n_vars or before < 0 or (before and not self.context):
            raise ShapeError(
                f"SegRNN x: expected shape (batch, steps={self.input_len}, vars={self.n_vars}), got {tuple(x.shape)}"
            )
        if before % self.seg_len:
            raise ShapeError(
                f"SegRNN x: {before} steps before the {self.input_len}-step window; expected whole segments "
                f"of seg_len={self.seg_len}"
            )
        if before:
            segs = self.ctx_embed(self._to_segments(x[:, :before]))  # (batch*lanes, before/seg_len, context)
            _, context = self.ctx_rnn(segs, context)
            x = x[:, before:]  # (batch, L, vars)
        batch = x.shape[0]
        if self.norm == "last":
            shift, scale = x[:, -1:, :], None  # (batch, 1, vars)
        elif self.norm == "revin":
            shift = x.mean(dim=1, keepdim=True)
            scale = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
        else:
            shift, scale = None, None
        z = x if shift is None else x - shift
        z = z if scale is None else z / scale
        state = None
        if context is not None:
            if not self.context:
                raise ShapeError("SegRNN got a context state but was built with context=0")
            h0 = torch.tanh(self.ctx_to_state(context.layers[0].h))  # (batch*lanes, d_model)
            state = State._trusted(self.state_spec, [LayerState(h0)])
        _, state = self.rnn(self.embed(self._to_segments(z)), state)  # h: (batch*lanes, d_model)
        y = self._decode(state.layers[0].h)  # (batch*lanes, out_segs, width) or flat
        y = self._from_segments(y, batch)  # (batch, H, vars)
        if scale is not None:
            y = y * scale
        if shift is not None:
            y = y + shift
        return y, state

    def _decode(self, h: torch.Tensor) -> torch.Tensor:
        rows, m = h.shape[0], self.out_segments
        if self.decoder == "linear":
            return self.head(self.dropout(h)).reshape(rows, m, -1)
        if self.decoder == "pmf":
            pos = self.pos_emb.unsqueeze(0).expand(rows, -1, -1)  # (rows, m, half)
            if self.channel_emb is not None:
                ch = self.channel_emb.unsqueeze(1).expand(-1, m, -1)  # (vars, m, d-half)
                ch = ch.repeat(rows // self.n_vars, 1, 1)  # (rows, m, d-half): lane r is variable r % vars
                pos = torch.cat([pos, ch], dim=-1)
            inp = pos.reshape(rows * m, 1, self.d_model)  # every output segment is one GRU step from h
            h0 = h.repeat_interleave(m, dim=0)  # (rows*m, d_model)
            out, _ = self.rnn(inp, State._trusted(self.state_spec, [LayerState(h0)]))
            return self.head(self.dropout(out[:, 0])).reshape(rows, m, -1)
        outs = []  # "rmf": a true rollout, each predicted segment goes back in
        state = State._trusted(self.state_spec, [LayerState(h)])
        seg = self.head(self.dropout(h))  # (rows, width)
        outs.append(seg)
        for _ in range(m - 1):
            out, state = self.rnn(self.embed(seg).unsqueeze(1), state)
            seg = self.head(self.dropout(out[:, 0]))
            outs.append(seg)
        return torch.stack(outs, dim=1)

    # -- the carried context state ----------------------------------------------------------

    def context_states(self, series: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run the context GRU over a whole series, segment by segment.

        ``series`` is ``(steps, vars)`` in globally scaled units (steps a multiple of seg_len).
        Returns ``(hs, final)``: ``hs`` is ``(steps/seg_len + 1, lanes, context)`` where ``hs[k]``
        is the state after the first ``k`` segments (``hs[0]`` is the start ``state`` or zeros),
        and ``final`` the State after the last segment, to carry on with.
        """
        if not self.context:
            raise ConfigError("SegRNN was built with context=0; it has no context state")
        segs = self.ctx_embed(self._to_segments(series.unsqueeze(0)))  # (lanes, segs, context)
        out, final = self.ctx_rnn(segs, state)  # out: (lanes, segs, context)
        start = state.layers[0].h if state is not None else torch.zeros_like(out[:, 0])
        return torch.cat([start.unsqueeze(0), out.permute(1, 0, 2)], dim=0), final

    def forecast(self, history_norm: torch.Tensor, horizon: int) -> torch.Tensor:
        """``(batch, steps, vars)`` scaled history -> ``(batch, horizon, vars)`` scaled forecast.

        Uses the last ``input_len`` steps; with a context GRU, the steps before them (whole
        segments, counted back from the window start) warm the carried context state first.
        """
        if horizon > self.horizon:
            raise ShapeError(f"SegRNN forecast: horizon {horizon} exceeds the trained horizon {self.horizon}")
        if history_norm.dim() != 3 or history_norm.shape[1] < self.input_len:
            raise ShapeError(
                f"SegRNN forecast: history must be (batch, steps >= {self.input_len}, vars), "
                f"got {tuple(history_norm.shape)}"
            )
        window = history_norm[:, -self.input_len :]
        context = None
        if self.context:
            before = history_norm.shape[1] - self.input_len
            usable = before - before % self.seg_len
            rows = []
            for b in range(history_norm.shape[0]):
                past = history_norm[b, before - usable : before]  # whole segments just before the window
                h = (
                    self.context_states(past)[0][-1]
                    if usable
                    else torch.zeros(self.lanes, self.context, dtype=window.dtype, device=window.device)
                )
                rows.append(h)
            ctx = torch.cat(rows, dim=0)  # (batch*lanes, context)
            context = State._trusted(self.context_spec, [LayerState(ctx)])  # type: ignore[arg-type]
        y, _ = self(window, context)
        return y[:, :horizon]
