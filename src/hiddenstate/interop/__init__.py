"""Ways in and out of hiddenstate: Keras, ONNX and Triton."""
