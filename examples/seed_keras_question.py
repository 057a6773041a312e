"""The Keras question, answered: set a stacked LSTM's state before every minibatch.

The user trains a two-layer stateful LSTM: batch 10, 96 time steps, 2 input and 2 output
variables. Before each minibatch they want every sample's hidden state to come from the true
values at the previous time step. In Keras that means assigning ``layer.states[i]`` by hand, where
a wrong shape goes through silently and ``h`` and ``c`` share one name. Here the layers may differ
in size (8 and 16 units, which one ``torch.nn.LSTM`` cannot do), the state is one validated
``hs.State``, and there are two ways to set it:

1. learned: ``SequenceModel(..., state_encoder="cond:2")`` maps the previous true observation
   ``cond`` (batch, 2) to ``h`` and ``c`` for every layer, and trains with the model;
2. explicit: build the tensors yourself and pass ``hs.State.from_tensors(spec, [(h0, c0), (h1, c1)])``
   to the model, or ``Stateful.set_state(layer=i, h=..., c=...)`` to a wrapper that carries state.

A state of the wrong shape is refused with a message that names the layer, the tensor and both
shapes. Run it with ``python examples/seed_keras_question.py``; it takes a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import hiddenstate as hs

BATCH, STEPS, N_VARS = 10, 96, 2  # the seed user's numbers
CHUNKS = 6  # minibatches per lane and epoch
WARM = 8  # the first steps of a minibatch, where the starting state matters most


@dataclass(frozen=True)
class SeedResult:
    """What the walk-through found; the test asserts on it."""

    state_size: tuple[tuple[int, ...], ...]
    losses: tuple[float, ...]  # training loss per step
    first_steps_mse_encoded: float  # mse over each minibatch's first WARM steps, state from cond
    first_steps_mse_zeros: float  # the same from a zero state, as without setting it
    explicit_vs_encoder: float  # max |difference| between the two ways of setting the state
    stateful_vs_model: float  # max |difference| between Stateful.set_state and the plain model
    refused: str  # the message for a (10, 2) h given to the 8-unit layer


def seasonal_lanes(batch: int = BATCH, chunks: int = CHUNKS, seed: int = 0) -> np.ndarray:
    """``(batch, chunks * STEPS + 2, 2)``: one series per lane, a daily (96-step) and weekly season.

    Variable 0 is a daily sine plus a weekly swing; variable 1 follows the same day at half the
    period and lags variable 0. Each lane starts at another point of the week.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(chunks * STEPS + 2)[None, :] + rng.integers(0, 7 * STEPS, size=(batch, 1))  # (batch, time)
    day = 2 * np.pi * t / STEPS
    week = 2 * np.pi * t / (7 * STEPS)
    v0 = np.sin(day) + 0.5 * np.sin(week)
    v1 = 0.7 * np.sin(2 * day - 1.0) + 0.3 * np.roll(v0, 3, axis=1)
    noise = 0.05 * rng.standard_normal((2, *t.shape))
    return np.stack([v0 + noise[0], v1 + noise[1]], axis=-1)  # (batch, time, 2)


def minibatches(series: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(x, y, cond)`` per chunk: ``x`` (batch, 96, 2), ``y`` the next-step targets, ``cond`` (batch, 2).

    ``cond`` is the true observation just before the chunk; that is what sets the state.
    """
    out = []
    for k in range(CHUNKS):
        start = 1 + k * STEPS
        x = series[:, start : start + STEPS]  # (batch, steps, 2)
        y = series[:, start + 1 : start + STEPS + 1]  # (batch, steps, 2): the next step's values
        cond = series[:, start - 1]  # (batch, 2): the previous true values
        out.append((x, y, cond))
    return out


def main(epochs: int = 6, seed: int = 0, verbose: bool = True) -> SeedResult:
    say = print if verbose else (lambda *_: None)
    torch.manual_seed(seed)
    series = torch.as_tensor(seasonal_lanes(seed=seed), dtype=torch.float32)
    batches = minibatches(series)

    # Two LSTM layers of different sizes, 2 -> 2, the state set from the previous true values.
    model = hs.SequenceModel(N_VARS, N_VARS, [hs.LSTM(8), hs.LSTM(16)], state_encoder="cond:2")
    spec = model.state_spec
    say(f"model: LSTM 8 -> LSTM 16 -> linear head, 2 -> 2; state_size {spec.state_size}")

    # 1. Learned: before every minibatch the encoder sets h and c of both layers from cond.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(epochs):
        for x, y, cond in batches:
            y_hat, _ = model(x, cond=cond)  # the state comes from cond, not from the last call
            loss = torch.nn.functional.mse_loss(y_hat, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    say(
        f"trained {len(losses)} minibatches of (batch={BATCH}, steps={STEPS}, 2), state encoded from the "
        f"previous true values: mse {losses[0]:.3f} -> {losses[-1]:.3f}"
    )

    # What setting the state buys: the first steps of each minibatch, from cond vs from zeros.
    model.eval()
    with torch.no_grad():
        zeros = hs.State.zeros(spec, BATCH)
        mse = torch.nn.functional.mse_loss
        encoded_mse = np.mean([float(mse(model(x[:, :WARM], cond=c)[0], y[:, :WARM])) for x, y, c in batches])
        zeros_mse = np.mean([float(mse(model(x[:, :WARM], zeros)[0], y[:, :WARM])) for x, y, _ in batches])
    say(
        f"first {WARM} steps of each minibatch: mse {encoded_mse:.3f} from the encoded state, "
        f"{zeros_mse:.3f} from a zero state"
    )

    # 2. Explicit: the same state from tensors you build yourself, here the encoder's own outputs.
    x, _, cond = batches[0]
    with torch.no_grad():
        enc = model.encoder(cond)  # type: ignore[misc]  # a State; any (10, 8)/(10, 16) tensors would do
        tensors = [(layer.h.clone(), layer.c.clone()) for layer in enc.layers]  # [(h0, c0), (h1, c1)]
        state = hs.State.from_tensors(spec, tensors)
        y_explicit, _ = model(x, state)
        y_encoded, _ = model(x, cond=cond)
        explicit_vs_encoder = float((y_explicit - y_encoded).abs().max())
    say(
        f"State.from_tensors(spec, [(h0, c0), (h1, c1)]) gives the same predictions: max diff {explicit_vs_encoder:.1e}"
    )

    # ... and through Stateful, which carries the state between calls: set each layer, then run.
    stateful = hs.Stateful(model, batch_size=BATCH)
    for i, (h, c) in enumerate(tensors):
        stateful.set_state(layer=i, h=h, c=c)
    with torch.no_grad():
        y_stateful = stateful(x)
    stateful_vs_model = float((y_stateful - y_explicit).abs().max())
    say(f"Stateful.set_state(layer=i, h=..., c=...) then stateful(x): max diff {stateful_vs_model:.1e}")

    # 3. The Keras mistake: an h sized like the input (10, 2) for the 8-unit layer is refused.
    try:
        stateful.set_state(layer=0, h=torch.zeros(BATCH, N_VARS), c=torch.zeros(BATCH, 8))
    except hs.StateError as e:
        refused = str(e)
    else:  # pragma: no cover - the library refuses it
        raise RuntimeError("a (10, 2) state for an 8-unit layer was accepted")
    say(f"a (10, 2) h for the 8-unit layer is refused: {refused}")

    return SeedResult(
        state_size=spec.state_size,
        losses=tuple(losses),
        first_steps_mse_encoded=float(encoded_mse),
        first_steps_mse_zeros=float(zeros_mse),
        explicit_vs_encoder=explicit_vs_encoder,
        stateful_vs_model=stateful_vs_model,
        refused=refused,
    )


if __name__ == "__main__":
    main()
