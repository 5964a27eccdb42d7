"""ckpt_convert: stream model weights from other formats into TensorRT-LLM compatible checkpoints.

Sources are registered in ``ckpt_convert.cli.SOURCES``; each maps its tensors with a ``mapping.Table``
per architecture and hands them to ``stream.convert_checkpoint``.
"""

__version__ = "0.1.0"
