"""ROUGE scores against hand-computed values, the sentence splitter, and the prompt builder."""

from __future__ import annotations

import random

import pytest

from ckpt_eval.metrics import (
    ROUGE_KEYS,
    compute_rouge,
    encode_prompt,
    split_sentences,
    summarization_prompt,
)


class WordTokenizer:
    """A whitespace tokenizer with a begin-of-text id, like many HF tokenizers with add_special_tokens."""

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {"<s>": 0}

    def encode(self, text: str) -> list[int]:
        return [0] + [self.vocabulary.setdefault(word, len(self.vocabulary)) for word in text.split()]


def test_identical_text_scores_100() -> None:
    text = "The bridge will close in March.\nDrivers face a seven-mile detour."
    assert compute_rouge([text], [text]) == pytest.approx(dict.fromkeys(ROUGE_KEYS, 100.0))


def test_disjoint_text_scores_0() -> None:
    scores = compute_rouge(["rover drills lunar ice"], ["council approves bridge budget"])
    assert scores == dict.fromkeys(ROUGE_KEYS, 0.0)


def test_hand_computed_case() -> None:
    # reference 6 tokens, prediction 7; unigram overlap 6 (the x2, cat, was, under, bed): F = 2*6/(6+7).
    # bigrams: 5 vs 6, overlap 4 (the cat, cat was, under the, the bed): F = 2*4/(5+6). LCS = 6 tokens.
    scores = compute_rouge(["the cat was found under the bed"], ["the cat was under the bed"])
    assert scores["rouge1"] == pytest.approx(100 * 12 / 13)
    assert scores["rouge2"] == pytest.approx(100 * 8 / 11)
    assert scores["rougeL"] == pytest.approx(100 * 12 / 13)
    assert scores["rougeLsum"] == pytest.approx(100 * 12 / 13)


def test_stemming_and_case_are_ignored() -> None:
    assert compute_rouge(["Officials Closed the Bridges"], ["officials closing the bridge"])["rouge1"] == 100.0


def test_rouge_lsum_scores_sentences_separately() -> None:
    # Summary-level LCS: each reference sentence is matched against the union of its LCS with every
    # predicted sentence, so the swapped sentence order costs nothing; plain ROUGE-L loses one sentence.
    reference = "Fire crews stopped the blaze.\nResidents returned home."
    prediction = "Residents returned home. Fire crews stopped the blaze."
    scores = compute_rouge([prediction], [reference])
    assert scores["rougeLsum"] == pytest.approx(100.0)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 8)


def test_scores_are_the_mean_over_pairs() -> None:
    pair_scores = [
        compute_rouge(["the cat was found under the bed"], ["the cat was under the bed"]),
        compute_rouge(["dogs bark"], ["cats purr"]),
    ]
    together = compute_rouge(
        ["the cat was found under the bed", "dogs bark"], ["the cat was under the bed", "cats purr"]
    )
    for key in ROUGE_KEYS:
        assert together[key] == pytest.approx((pair_scores[0][key] + pair_scores[1][key]) / 2)


def test_mean_matches_the_bootstrap_mid_estimate_of_evaluate() -> None:
    from rouge_score import rouge_scorer, scoring

    rng = random.Random(0)
    words = ["the", "council", "bridge", "fire", "river", "school", "rover", "ice", "cup", "vote", "storm"]
    references = [" ".join(rng.choices(words, k=12)) for _ in range(60)]
    predictions = [" ".join(rng.choices(words, k=10)) for _ in range(60)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    aggregator = scoring.BootstrapAggregator()
    for prediction, reference in zip(predictions, references):
        aggregator.add_scores(scorer.score(reference, prediction))
    mid = {key: 100 * value.mid.fmeasure for key, value in aggregator.aggregate().items()}
    ours = compute_rouge(predictions, references)
    for key in mid:
        assert ours[key] == pytest.approx(mid[key], abs=0.5)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        compute_rouge(["a", "b"], ["a"])


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("One. Two! Three? four", ["One.", "Two!", "Three? four"]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        (
            "Mr. Lee met Dr. Ruiz in the U.S. Army base. It rained.",
            ["Mr. Lee met Dr. Ruiz in the U.S. Army base.", "It rained."],
        ),
        ("It cost $3.5 million at 5 p.m. on Friday.", ["It cost $3.5 million at 5 p.m. on Friday."]),
        ("First line\nSecond line. Third.\n\n", ["First line", "Second line.", "Third."]),
        ("", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_prompt_is_article_then_tldr() -> None:
    assert summarization_prompt("  A storm hit the coast.\n") == "A storm hit the coast. TL;DR:"
    assert summarization_prompt("They do n't know.") == "They don't know. TL;DR:"


def test_short_prompt_is_not_truncated() -> None:
    tokenizer = WordTokenizer()
    ids = encode_prompt("a storm hit the coast", tokenizer, max_input_length=100)
    assert ids == tokenizer.encode("a storm hit the coast TL;DR:")


def test_long_article_is_cut_but_keeps_the_tldr_cue() -> None:
    tokenizer = WordTokenizer()
    article = " ".join(f"w{index}" for index in range(50))
    ids = encode_prompt(article, tokenizer, max_input_length=10)
    expected_text = "w0 w1 w2 w3 w4 w5 w6 w7 TL;DR:"
    assert ids == tokenizer.encode(expected_text)
    assert len(ids) == 10


def test_prompt_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_input_length"):
        encode_prompt("text", WordTokenizer(), max_input_length=0)


def test_long_article_with_a_trained_bpe_tokenizer_keeps_the_cue() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from ckpt_eval.dataset import load_summarization_dataset

    articles = [record["article"] for record in load_summarization_dataset(None)]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(articles, trainer)

    class Encoder:
        def encode(self, text: str) -> list[int]:
            return tokenizer.encode(text).ids

    ids = encode_prompt(articles[0], Encoder(), max_input_length=64)
    assert len(ids) == 64
    assert tokenizer.decode(ids).endswith(" TL;DR:")
    assert tokenizer.decode(ids).startswith(articles[0][:40])
