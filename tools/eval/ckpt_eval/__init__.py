"""ckpt_eval: run and evaluate TensorRT-LLM checkpoints and engines."""
