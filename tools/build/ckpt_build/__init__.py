"""ckpt_build: TensorRT(-RTX) engines from TensorRT-LLM checkpoints, built from TensorRT's native LLM layers."""

__version__ = "0.1.0"
