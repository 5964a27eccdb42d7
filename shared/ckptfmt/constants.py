"""Constants of the checkpoint format: file names, dtypes, architectures, quantization spellings."""

import ml_dtypes
import numpy as np

CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
RANK_FILE = "rank{rank}.safetensors"
ENGINE_FILE = "rank{rank}.engine"
TOKENIZER_DIR = "tokenizer"  # converters carry the source's tokenizer files here; evaluators look here

# dtype name in config.json -> numpy dtype
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

# safetensors dtype tag <-> numpy dtype (everything the format may hold)
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
SAFETENSORS_TAGS: dict[np.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# quant_algo (newer TensorRT-LLM / ModelOpt spelling) <-> the boolean-flag spelling
WEIGHT_ONLY_ALGOS = {"W8A16": "int8", "W4A16": "int4"}
KV_CACHE_ALGOS = ("INT8", "FP8")

# architecture string in config.json -> model family (TensorRT-LLM's names and the HF names ModelOpt writes);
# names.FAMILIES says what each family looks like
ARCHITECTURES: dict[str, str] = {
    "GPTForCausalLM": "gpt",
    "GPT2LMHeadModel": "gpt",
    "OPTForCausalLM": "opt",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "GPTNeoXForCausalLM": "gptneox",
    "FalconForCausalLM": "falcon",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
}
