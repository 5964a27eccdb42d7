"""torch dtypes by the names config.json and the engine I/O contract use (one map for the evaluator)."""

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "int8": torch.int8,
    "bool": torch.bool,
}
