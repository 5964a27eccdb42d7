"""Constants of the checkpoint format: file names, dtypes, architectures, quantization spellings."""

from .dtypes import DtypeTable, TagTable

CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
RANK_FILE = "rank{rank}.safetensors"
ENGINE_FILE = "rank{rank}.engine"
TOKENIZER_DIR = "tokenizer"  # converters carry the source's tokenizer files here; evaluators look here

# dtype name in config.json -> numpy dtype (numpy and ml_dtypes load when a value is read: ``dtypes``)
DTYPES = DtypeTable({"float32": "float32", "float16": "float16", "bfloat16": "ml_dtypes.bfloat16"})

# safetensors dtype tag <-> numpy dtype (everything the format may hold)
SAFETENSORS_DTYPES = DtypeTable(
    {
        "F64": "float64",
        "F32": "float32",
        "F16": "float16",
        "BF16": "ml_dtypes.bfloat16",
        "F8_E4M3": "ml_dtypes.float8_e4m3fn",
        "F8_E5M2": "ml_dtypes.float8_e5m2",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U8": "uint8",
        "BOOL": "bool",
    }
)
SAFETENSORS_TAGS = TagTable(SAFETENSORS_DTYPES)

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
