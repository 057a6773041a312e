"""Model kinds beyond the plain stack, each registered with ``register_model_kind``:
:mod:`.segrnn` (``"segrnn"``)."""
