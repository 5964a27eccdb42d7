"""Test helpers for ckpt-summarize: a tiny BPE tokenizer fitting the tiny models' vocabulary (250 ids)."""

from __future__ import annotations

from pathlib import Path

from ckpt_eval.dataset import load_summarization_dataset

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: the tiny LLaMA configs' unk/bos/eos


def save_tiny_tokenizer(path: str | Path, vocab_size: int = 250) -> Path:
    """Train a byte-free BPE tokenizer on the shipped articles and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [text for record in load_summarization_dataset(None) for text in (record["article"], record["highlights"])]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, limit_alphabet=80)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    return Path(path)


ROOT = Path(__file__).resolve().parents[2]
