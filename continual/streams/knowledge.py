"""The `facts` stream: knowledge injection, one task per set of invented facts.

Each example is a question followed by its answer and [end] ("故宫在哪里?在北京[end]"), and the
loss and metrics read the answer's characters only (the question's targets are [pad]). The metric
is exact match of the greedy answer decoded until [end], computed in one teacher-forced forward
pass: greedy decoding from the question reproduces the answer and then [end] exactly when, at
every answer position, the likeliest next token given the question and the answer so far is the
right one (so the metric runs inside the compiled evaluation; tests check it against `generate`).
Bits per character on the answers is the second reading. Retrieval into the prompt is
continual.retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from continual.data.facts import (
    LANGUAGES,
    TEMPLATE_KINDS,
    FactBank,
    fact_text,
    make_facts,
    renderings,
)
from continual.data.text import PAD, CharTokenizer
from continual.types import Stream, Task

SEPARATOR = "\n"  # between the retrieved facts and the question


@dataclass(frozen=True)
class FactStream(Stream):
    """A stream of question -> answer sequences over a bank of facts, one task per fact set."""

    tokenizer: CharTokenizer | None = None
    bank: FactBank | None = None
    context: int = 0  # the longest sequence any prompt (retrieved facts included) may take
    test_templates: str = "train"  # which question templates the test splits use

    def questions(self, fact, kind: str) -> list[tuple[str, str]]:
        """The (question, answer) pairs of one fact in templates `kind` (as its tasks ask)."""
        return renderings(fact, kind)

    def encode_questions(self, pairs, what: str) -> dict[str, np.ndarray]:
        """{"x", "y"} of (question, answer) pairs (`encode_pairs` within the context)."""
        return encode_pairs(self.tokenizer, pairs, self.context, what)


def retrieval_prompt(sentences, question: str) -> str:
    """The retrieved facts, one per line, then the question."""
    return "".join(s + SEPARATOR for s in sentences) + question


def encode_pairs(tokenizer: CharTokenizer, pairs, context: int, what: str, width: int = 0):
    """{"x", "y"} (N, W) int32 of (prompt, answer) pairs: x is prompt + answer + [end] without its
    last token, y the next token at the answer's positions and [pad] elsewhere; W is the longest
    sequence (at least `width`). A sequence longer than `context` is an error naming `what`."""
    seqs = [(tokenizer.encode(q), tokenizer.encode(a, end=True)) for q, a in pairs]
    if not seqs:
        raise ValueError(f"{what}: no questions")
    longest = max(len(q) + len(a) - 1 for q, a in seqs)
    if longest > context:
        raise ValueError(
            f"{what}: a question with its answer takes {longest} tokens, more than the context "
            f"of {context}; raise the stream's and the model's context"
        )
    width = max(width, longest)
    x = np.full((len(seqs), width), PAD, np.int32)
    y = np.full((len(seqs), width), PAD, np.int32)
    for i, (q, a) in enumerate(seqs):
        s = np.concatenate([q, a])
        x[i, : len(s) - 1] = s[:-1]
        y[i, len(q) - 1 : len(s) - 1] = a
    return {"x": x, "y": y}


def _pairs(facts, kind: str) -> list[tuple[str, str]]:
    return [pair for fact in facts for pair in renderings(fact, kind)]


def facts(
    num_entities: int = 40,
    num_sets: int = 5,
    languages=LANGUAGES,
    context: int = 64,
    test_templates: str = "train",
    reader_entities: int = 0,
    seed: int = 0,
    include_demo: bool = True,
) -> FactStream:
    """Knowledge injection: one task per fact set of `make_facts(num_entities, num_sets, ...)`.

    Training questions use the three training templates of every fact; the test questions use
    `test_templates` ("train": was the fact learnt; "heldout": the unseen paraphrases). The
    tokenizer covers every question, answer and fact sentence of the bank (reader facts
    included); every output but [pad] is allowed. `context` bounds every sequence, retrieval
    prompts included (see continual.retrieval).
    """
    if test_templates not in TEMPLATE_KINDS:
        raise ValueError(f"test_templates must be 'train' or 'heldout', got {test_templates!r}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise ValueError(f"context must be an integer >= 2, got {context!r}")
    if isinstance(languages, str):
        languages = (languages,)
    bank = make_facts(num_entities, num_sets, tuple(languages), seed, include_demo, reader_entities)
    everything = bank.facts + bank.reader
    texts = [fact_text(f) for f in everything] + [SEPARATOR]
    texts += [q + a for kind in TEMPLATE_KINDS for q, a in _pairs(everything, kind)]
    tokenizer = CharTokenizer.build(texts)
    splits = [(_pairs(s, "train"), _pairs(s, test_templates)) for s in bank.sets]
    width = max(
        len(q) + len(a) for train, test in splits for q, a in train + test
    )  # characters + [end] - 1: one width for every task (they share one shape)
    mask = np.ones(tokenizer.vocab_size, bool)
    mask[PAD] = False
    tasks = tuple(
        Task(
            i,
            f"set{i}",
            encode_pairs(tokenizer, train, context, f"fact set {i}", width),
            encode_pairs(tokenizer, test, context, f"fact set {i}", width),
            mask,
        )
        for i, (train, test) in enumerate(splits)
    )
    return FactStream(
        "facts",
        tasks,
        "domain",
        "answers",
        tokenizer.vocab_size,
        tokenizer=tokenizer,
        bank=bank,
        context=context,
        test_templates=test_templates,
    )
