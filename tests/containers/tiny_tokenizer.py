"""A small BPE tokenizer matching the tiny models' vocabulary, trained on the evaluator's shipped articles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: LLaMA's unk/bos/eos


def _articles(dataset: Path) -> Iterator[str]:
    with dataset.open() as lines:
        for line in lines:
            record = json.loads(line)
            yield record["article"]
            yield record["highlights"]


def save_tiny_tokenizer(path: Path, dataset: Path, vocab_size: int) -> None:
    """Write tokenizer.json + tokenizer_config.json (transformers' fast tokenizer) into `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, limit_alphabet=90)
    tokenizer.train_from_iterator(_articles(dataset), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
