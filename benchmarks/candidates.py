"""The candidates the benchmark scripts compare, one class per (framework, scenario).

Each is built in its worker process from plain arguments and has ``run()``: one timed repeat.
Training and inference candidates return the sample-steps done; streaming candidates return
``(steps, per-call seconds)``.

- ``Hand*``: what a PyTorch user writes by hand: ``nn.LSTM`` (one module with ``num_layers`` when
  the layers share a size, else one per layer with ``nn.Dropout`` between), ``nn.Linear`` on
  every step, ``Adam``, MSE, the state detached after every chunk.
- ``Hs*``: the same through hiddenstate: ``hs.Trainer`` over ``hs.StatefulBatches``, and
  ``hs.Stateful`` for inference; ``backend="fused"`` switches the model to the fused kernel.
- ``Keras*``: Keras 3 on TensorFlow, ``stateful=True`` LSTMs, ``TimeDistributed(Dense)``,
  ``train_on_batch``/``predict_on_batch`` per chunk (faster here than ``fit``/``predict``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .common import Config, import_keras, lane_chunks, trainer_threads


class HandModel(nn.Module):
    """The hand-written model: an LSTM stack and a per-step linear head."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        sizes = cfg.layers
        if len(set(sizes)) == 1:  # one nn.LSTM runs the whole stack, dropout between layers
            self.rnns = nn.ModuleList([nn.LSTM(cfg.n_in, sizes[0], len(sizes), batch_first=True, dropout=cfg.dropout)])
        else:
            ins = (cfg.n_in, *sizes[:-1])
            self.rnns = nn.ModuleList(nn.LSTM(i, h, batch_first=True) for i, h in zip(ins, sizes, strict=True))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(sizes[-1], cfg.n_in)

    def forward(self, x: torch.Tensor, hx: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        out, new = x, []
        for i, rnn in enumerate(self.rnns):
            if i:
                out = self.drop(out)
            out, h = rnn(out, hx[i])  # (batch, steps, hidden_i)
            new.append(h)
        return self.head(out), new


def _threads(cfg: Config, threads: int | None) -> int:
    return threads if threads is not None else trainer_threads(cfg.layers)


# -- training -------------------------------------------------------------------------------------


class HandTrain:
    """The hand-written truncated-BPTT loop."""

    def __init__(self, cfg: Config, threads: int | None = None, fused_adam: bool = False) -> None:
        torch.manual_seed(0)
        self.cfg, self.threads = cfg, _threads(cfg, threads)
        _, self.xs, self.ys = lane_chunks(cfg)
        self.model = HandModel(cfg)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=fused_adam or None)
        self.losses: list[float] = []

    def run(self) -> int:
        torch.set_num_threads(self.threads)
        torch.manual_seed(0)  # a reproducible run, as hs.Trainer.fit seeds (TrainConfig.seed)
        self.model.train()
        hx: list[Any] = [None] * len(self.model.rnns)
        total = torch.zeros(())
        for x, y in zip(self.xs, self.ys, strict=True):
            y_hat, hx = self.model(x, hx)
            hx = [tuple(t.detach() for t in h) for h in hx]
            loss = F.mse_loss(y_hat, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total += loss.detach()
        self.extra = {"loss": float(total) / len(self.xs)}
        return self.cfg.sample_steps


def _module_call(cell: nn.RNNBase, x: torch.Tensor, hx: Any) -> tuple[torch.Tensor, Any]:
    return cell(x, hx)  # type: ignore[no-any-return]


def set_backend(model: Any, backend: str) -> None:
    """``model.rnn.set_backend(backend)``, plus ``"layered"``: how ``StackedRNN`` ran before it
    called the kernels directly, one ``nn.LSTM`` module call per layer (kept to measure the gain)."""
    if backend == "layered":
        model.rnn._fused = _module_call
    else:
        model.rnn.set_backend(backend)


class HsTrain:
    """``hs.Trainer`` (clip off, to do the hand loop's work) over ``hs.StatefulBatches``.

    ``plain_adam=True`` swaps the Trainer's fused Adam for the hand loop's ``torch.optim.Adam()``
    (the default implementation)."""

    def __init__(
        self, cfg: Config, backend: str = "torch", threads: int | None = None, plain_adam: bool = False
    ) -> None:
        import hiddenstate as hs

        torch.manual_seed(0)
        self.cfg = cfg
        # fit() switches to its thread count and back: ~10-40 ms per fit() call, paid once per
        # training run. Setting it beforehand leaves the per-epoch cost, which is what repeats
        # of one-epoch fits should measure (the hand loop runs with the same setting).
        torch.set_num_threads(_threads(cfg, threads))
        self.batches, _, _ = lane_chunks(cfg)
        self.model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers], dropout=cfg.dropout)
        set_backend(self.model, backend)
        config = hs.TrainConfig(epochs=1, lr=cfg.lr, clip=None, progress=False, threads=threads)
        self.trainer = hs.Trainer(self.model, config)
        if plain_adam:
            self.trainer.optimizer = torch.optim.Adam(self.trainer._params, lr=cfg.lr)

    def run(self) -> int:
        history = self.trainer.fit(self.batches)
        self.extra = {"loss": history.train_loss[-1]}
        return self.cfg.sample_steps


class KerasTrain:
    """Keras 3 stateful LSTMs, ``train_on_batch`` per chunk, states reset every epoch."""

    def __init__(self, cfg: Config, threads: int | None = None) -> None:
        keras = import_keras()
        keras_threads(threads)
        self.cfg = cfg
        keras.utils.set_random_seed(0)
        self.model = keras_model(keras, cfg, cfg.steps, cfg.batch)
        self.model.compile(optimizer=keras.optimizers.Adam(cfg.lr), loss="mse")
        _, xs, ys = lane_chunks(cfg)
        self.xs = [x.numpy() for x in xs]
        self.ys = [y.numpy() for y in ys]

    def run(self) -> int:
        reset_keras_states(self.model)
        losses = [self.model.train_on_batch(x, y) for x, y in zip(self.xs, self.ys, strict=True)]
        self.extra = {"loss": float(np.mean(losses))}
        return self.cfg.sample_steps


def keras_threads(threads: int | None) -> None:
    """Pin TensorFlow's thread pools (before it starts them); None leaves its defaults."""
    if threads is not None:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def keras_model(keras: Any, cfg: Config, steps: int, batch: int) -> Any:
    layers: list[Any] = [keras.Input(batch_shape=(batch, steps, cfg.n_in))]
    for i, h in enumerate(cfg.layers):
        if i and cfg.dropout:
            layers.append(keras.layers.Dropout(cfg.dropout))
        layers.append(keras.layers.LSTM(h, stateful=True, return_sequences=True))
    layers.append(keras.layers.TimeDistributed(keras.layers.Dense(cfg.n_in)))
    return keras.Sequential(layers)


def reset_keras_states(model: Any) -> None:
    for layer in model.layers:
        if hasattr(layer, "reset_states"):
            layer.reset_states()


# -- inference over chunks ------------------------------------------------------------------------


class HandInfer:
    def __init__(self, cfg: Config, threads: int | None = None) -> None:
        torch.manual_seed(0)
        self.cfg, self.threads = cfg, _threads(cfg, threads)
        _, self.xs, _ = lane_chunks(cfg)
        self.model = HandModel(cfg).eval()

    def run(self) -> int:
        torch.set_num_threads(self.threads)
        hx: list[Any] = [None] * len(self.model.rnns)
        with torch.inference_mode():
            for x in self.xs:
                _, hx = self.model(x, hx)
        return self.cfg.sample_steps


class HsInfer:
    """``hs.Stateful`` carrying the state from chunk to chunk."""

    def __init__(self, cfg: Config, backend: str = "torch", threads: int | None = None) -> None:
        import hiddenstate as hs

        torch.manual_seed(0)
        self.cfg, self.threads = cfg, _threads(cfg, threads)
        _, self.xs, _ = lane_chunks(cfg)
        model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers], dropout=cfg.dropout).eval()
        set_backend(model, backend)
        self.wrapper = hs.Stateful(model, batch_size=cfg.batch)

    def run(self) -> int:
        torch.set_num_threads(self.threads)
        self.wrapper.reset_state()
        with torch.inference_mode():
            for x in self.xs:
                self.wrapper(x)
        return self.cfg.sample_steps


class KerasInfer:
    def __init__(self, cfg: Config, threads: int | None = None) -> None:
        keras = import_keras()
        keras_threads(threads)
        self.cfg = cfg
        keras.utils.set_random_seed(0)
        self.model = keras_model(keras, cfg, cfg.steps, cfg.batch)
        _, xs, _ = lane_chunks(cfg)
        self.xs = [x.numpy() for x in xs]

    def run(self) -> int:
        reset_keras_states(self.model)
        for x in self.xs:
            self.model.predict_on_batch(x)
        return self.cfg.sample_steps


# -- streaming: one step per call -----------------------------------------------------------------


def _stream_inputs(cfg: Config, streams: int, calls: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((calls, streams, 1, cfg.n_in)).astype(np.float32)  # (calls, streams, 1, n_in)


class HandStream:
    def __init__(self, cfg: Config, streams: int, calls: int, threads: int | None = None) -> None:
        torch.manual_seed(0)
        self.threads = _threads(cfg, threads)
        self.xs = list(torch.from_numpy(_stream_inputs(cfg, streams, calls)))
        self.model = HandModel(cfg).eval()
        self.hx: list[Any] = [None] * len(self.model.rnns)

    def run(self) -> tuple[int, list[float]]:
        torch.set_num_threads(self.threads)
        lat = []
        with torch.inference_mode():
            for x in self.xs:
                t = time.perf_counter()
                _, self.hx = self.model(x, self.hx)
                lat.append(time.perf_counter() - t)
        return len(self.xs), lat


class HsStream:
    def __init__(
        self, cfg: Config, streams: int, calls: int, backend: str = "torch", threads: int | None = None
    ) -> None:
        import hiddenstate as hs

        torch.manual_seed(0)
        self.threads = _threads(cfg, threads)
        self.xs = list(torch.from_numpy(_stream_inputs(cfg, streams, calls)))
        model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers], dropout=cfg.dropout).eval()
        set_backend(model, backend)
        self.wrapper = hs.Stateful(model, batch_size=streams)

    def run(self) -> tuple[int, list[float]]:
        torch.set_num_threads(self.threads)
        lat = []
        with torch.inference_mode():
            for x in self.xs:
                t = time.perf_counter()
                self.wrapper(x)
                lat.append(time.perf_counter() - t)
        return len(self.xs), lat


class KerasStream:
    def __init__(self, cfg: Config, streams: int, calls: int, threads: int | None = None) -> None:
        keras = import_keras()
        keras_threads(threads)
        keras.utils.set_random_seed(0)
        self.model = keras_model(keras, cfg, 1, streams)
        self.xs = list(_stream_inputs(cfg, streams, calls))

    def run(self) -> tuple[int, list[float]]:
        lat = []
        for x in self.xs:
            t = time.perf_counter()
            self.model.predict_on_batch(x)
            lat.append(time.perf_counter() - t)
        return len(self.xs), lat
