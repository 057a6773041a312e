"""How a layer's sequence runs: :mod:`.torch` (one cuDNN/oneDNN call per layer, the default)
and :mod:`.fused` (each LSTM layer's time loop in one call into a small C kernel, CPU only)."""
