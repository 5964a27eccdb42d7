"""ROUGE scores and the summarization prompt, following TensorRT-LLM `summarize.py` conventions.

Scores come from `rouge_score` (Porter stemming on, no hub script, no NLTK data). Each metric is the mean
F-measure over the set, ×100. `summarize.py` calls `evaluate`'s rouge, which reports the `mid` F-measure of
`rouge_score`'s BootstrapAggregator: the median of resampled means, an estimate of this same mean that
differs from it only by resampling noise (up to about 0.15 point on the 28-article shipped set).

ROUGE-Lsum needs one sentence per line: predictions and references are both split by `split_sentences`, a
regex splitter standing in for NLTK's punkt (whose data cannot be downloaded here).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PROMPT_SUFFIX = " TL;DR: "

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before whitespace and a
# capital letter, digit or opening quote. Two fixed-width look-behinds because Python needs fixed widths.
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[\"'“‘(\[]?[A-Z0-9])")
# Words whose period does not end a sentence, and single capitals (initials, "U.S.").
_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "Gen", "Col", "Lt", "Sgt", "Sen", "Gov")
_ABBREVIATION = re.compile(rf"\b(?:{'|'.join(_ABBREVIATIONS)}|[A-Z])\.$")


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


def split_sentences(text: str) -> list[str]:
    """Split text into sentences: at line breaks, then at sentence punctuation (not after Mr., U.S. ...)."""
    return [sentence for line in text.splitlines() for sentence in _split_line(line.strip())]


def _split_line(line: str) -> list[str]:
    sentences: list[str] = []
    for piece in _SENTENCE_BREAK.split(line):
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        elif piece:
            sentences.append(piece)
    return sentences


def compute_rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures ×100 of predictions against their references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    from rouge_score import rouge_scorer  # imports nltk (most of a second): only when scoring

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score("\n".join(split_sentences(reference)), "\n".join(split_sentences(prediction)))
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


def summarization_prompt(article: str) -> str:
    """The prompt of `summarize.py`: the article, then ` TL;DR:`, with " n't" rejoined to its word."""
    return (article.strip() + PROMPT_SUFFIX).strip().replace(" n't", "n't")


def encode_prompt(article: str, tokenizer: Tokenizer, max_input_length: int) -> list[int]:
    """Token ids of the prompt, at most `max_input_length` of them.

    A long article is cut at its end while the closing ` TL;DR:` tokens are kept (`summarize.py` truncates
    the whole prompt, which drops the cue the model summarizes from).
    """
    if max_input_length < 1:
        raise ValueError(f"max_input_length must be positive, got {max_input_length}")
    prompt = summarization_prompt(article)
    prompt_ids = list(tokenizer.encode(prompt))
    if len(prompt_ids) <= max_input_length:
        return prompt_ids
    body = prompt.removesuffix(PROMPT_SUFFIX.strip()).rstrip()
    cue_length = max(len(prompt_ids) - len(tokenizer.encode(body)), 0)
    if cue_length >= max_input_length:
        return prompt_ids[:max_input_length]
    return prompt_ids[: max_input_length - cue_length] + prompt_ids[len(prompt_ids) - cue_length :]
