"""Datasets of the lm-eval tasks shipped with ckpt_eval, read from ckpt_eval's own data (no hub)."""

from __future__ import annotations

import datasets

from ckpt_eval.mmlu_data import CHOICES, load_subjects
from ckpt_eval.perplexity import read_documents


def mmlu_mini(**_metadata) -> datasets.DatasetDict:
    """The shipped multiple-choice set: dev (few-shot examples) and test splits."""
    subjects = load_subjects(None, 0)

    def rows(split: str) -> list[dict]:
        return [
            {"subject": s.name, "question": q.text, "choices": list(q.options), "answer": CHOICES.index(q.answer)}
            for s in subjects
            for q in getattr(s, split)
        ]

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows(split)) for split in ("dev", "test")})


def text_mini(**_metadata) -> datasets.DatasetDict:
    """The shipped perplexity texts, one document per row."""
    docs = [{"title": title, "text": text} for title, text in read_documents(None, "text")]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
