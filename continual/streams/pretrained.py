"""The `pretrained_facts` stream: invented facts injected into a pretrained chat model, set after
set, beside what its pretraining taught.

Tokens are the model's own (a byte-level BPE tokenizer read from its GGUF; SmolLM2-135M-Instruct
by default). Every question is asked in the model's chat format (ChatML), with the system
message and demonstration turns of continual.data.probes:

    <|im_start|>system⏎Answer with one word or number.<|im_end|>⏎
    <|im_start|>user⏎What is the capital of Peru?<|im_end|>⏎
    <|im_start|>assistant⏎Lima<|im_end|>⏎
    ... (the other demonstration turns) ...
    <|im_start|>user⏎Where is the Forbidden City?<|im_end|>⏎
    <|im_start|>assistant⏎Beijing<|im_end|>

(⏎ is a newline; the lines are joined). An example is that prompt, the answer, then the end
of turn `<|im_end|>` (the eos). Only the answer's tokens and the eos are targets; every other
position's target is PAD (0, SmolLM2's `<|endoftext|>`, which never occurs as a target), so the
`answers` likelihood reads the answers alone: exact match of the greedy answer (right when
greedy decoding after the prompt yields the answer's tokens and then `<|im_end|>`) and, as its
second reading, bits per token.

Tasks, in order:
  set0 .. set{n-1}   the fact sets of continual.data.facts (English by default): trained, one
                     after another (training templates; the test split uses `test_templates`)
  probes             the probe questions of continual.data.probes, evaluation-only: facts and
                     skills the model may know from pretraining (exact match)
  english, python    held-out general text, evaluation-only: every position a target, so the
                     second reading is bits per token of the text itself

The stream's `general` data is windows of the same corpora's training split (never the held-out
one): the pretraining-like text a method with `data: general` consolidates on (EWC's Fisher of
general text, a replay memory of general text; continual.runner).

Every task has one width: the longest question-and-answer sequence (all probes counted, kept or
not, so that keeping fewer changes no shape). Text windows take that many tokens (+1 for the
last target), evenly spaced over the corpus's held-out split. `num_outputs` is the vocabulary;
every output is allowed (as `generate` with pad_id=None decodes).

`probe_keep` lists the probe indices (of continual.data.probes.PROBES) the probe task holds:
the experiment scores the base model first (`probe_matches`), keeps what it answers
(`known_probes`), and builds the stream again with those, so that the probe column starts at 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from continual.data import probes as probe_data
from continual.data import text
from continual.data.bpe import BPETokenizer
from continual.data.facts import TEMPLATE_KINDS, FactBank, make_facts, renderings
from continual.data.gguf import read_tokenizer_metadata
from continual.data.smollm2 import smollm2_path
from continual.data.text import PAD
from continual.losses import answers
from continual.types import Stream, Task

TEXTS = ("english", "python")  # the held-out general text, as continual.data.text's corpora


@dataclass(frozen=True)
class PretrainedStream(Stream):
    """Fact sets (trained), probes and general text (evaluation-only) in a chat model's tokens."""

    tokenizer: BPETokenizer | None = None
    bank: FactBank | None = None
    width: int = 0  # the tokens of every example (input and targets)
    probe_ids: tuple[int, ...] = ()  # the PROBES indices the probe task holds, in order
    system: str | None = probe_data.SYSTEM
    shots: tuple[tuple[str, str], ...] = probe_data.SHOTS
    context: int = 0  # the longest sequence any prompt (retrieved facts included) may take
    test_templates: str = "train"  # which question templates the fact sets' test splits use
    unit: str = "token"  # a token is a subword: the answers' second reading is bits_per_token

    def prompt(self, question: str) -> str:
        """The chat prompt a question is asked with (what greedy decoding continues)."""
        return chat_prompt(self.tokenizer, question, self.system, self.shots)

    def questions(self, fact, kind: str) -> list[tuple[str, str]]:
        """The (question, answer) pairs of one fact in templates `kind` (`fact_questions`)."""
        return fact_questions(fact, kind)

    def encode_questions(self, pairs, what: str) -> dict[str, np.ndarray]:
        """{"x", "y"} of (question, answer) pairs asked in the chat format, as wide as the
        longest; one longer than the context is an error naming `what`."""
        if not pairs:
            raise ValueError(f"{what}: no questions")
        width = max(
            sum(map(len, _sequence(self.tokenizer, q, a, self.prompt))) - 1 for q, a in pairs
        )
        if width > self.context:
            raise ValueError(
                f"{what}: a question with its answer takes {width} tokens in the chat format, "
                f"more than the context of {self.context}; raise the stream's and the model's"
            )
        return encode_chat(self.tokenizer, pairs, width, self.prompt)


def fact_questions(fact, kind: str) -> list[tuple[str, str]]:
    """A fact's questions in templates `kind`, each answered by the bare value ("Where is Monba
    Palace?" -> "Rirtonzeam", not "In Rirtonzeam."), as the system message and the
    demonstrations ask (one word or number, no full stop): the answer's form is then not
    something fine-tuning teaches and the probes lose."""
    return [(question, fact.value) for question, _ in renderings(fact, kind)]


def chat_prompt(
    tokenizer: BPETokenizer,
    question: str,
    system: str | None = probe_data.SYSTEM,
    shots: Sequence[tuple[str, str]] = probe_data.SHOTS,
) -> str:
    """The ChatML prompt of `question`: the system message (None: the template's default), the
    demonstration turns `shots` ((question, answer) pairs), the question, the assistant's turn."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    for q, a in shots:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return tokenizer.chat([*messages, {"role": "user", "content": question}])


def encode_chat(tokenizer: BPETokenizer, pairs, width: int, prompt) -> dict[str, np.ndarray]:
    """{"x", "y"} (N, width) int32 of (question, answer) pairs: x is prompt(question) + answer +
    eos without its last token, y the answer's tokens and the eos at their positions, PAD
    elsewhere (and after the sequence)."""
    x = np.full((len(pairs), width), PAD, np.int32)
    y = np.full((len(pairs), width), PAD, np.int32)
    for i, (q, a) in enumerate(pairs):
        p, t = _sequence(tokenizer, q, a, prompt)
        s = np.array(p + t, np.int32)
        x[i, : len(s) - 1] = s[:-1]
        y[i, len(p) - 1 : len(s) - 1] = t
    return {"x": x, "y": y}


def _sequence(tokenizer: BPETokenizer, question: str, answer: str, prompt):
    """(prompt ids, target ids: the answer's and the eos)."""
    targets = [*tokenizer.encode(answer), tokenizer.eos_id]
    if PAD in targets:
        raise ValueError(f"the answer {answer!r} holds token {PAD}, which marks 'no target'")
    return tokenizer.encode(prompt(question)), targets


def text_windows(tokenizer: BPETokenizer, corpus: str, width: int, count: int, name: str):
    """{"x", "y"} (count, width) int32: windows of `corpus`'s tokens, y = x shifted by one, every
    position a target; the starts evenly spaced (overlapping when the text is short). A text of
    fewer than width + 1 tokens gives windows of all of it, padded (PAD: no target)."""
    ids = np.asarray(tokenizer.encode(corpus), np.int32)
    if (ids == PAD).any():
        raise ValueError(f"text {name}: token {PAD} occurs in it, but it marks 'no target'")
    if len(ids) < 2:
        raise ValueError(f"text {name}: {len(ids)} tokens make no next-token target")
    span = min(width + 1, len(ids))
    starts = np.linspace(0, len(ids) - span, count).round().astype(np.int64)
    w = ids[starts[:, None] + np.arange(span)[None, :]]
    x = np.full((count, width), PAD, np.int32)
    y = np.full((count, width), PAD, np.int32)
    x[:, : span - 1], y[:, : span - 1] = w[:, :-1], w[:, 1:]
    return {"x": x, "y": y}


def _positive(name: str, value, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def _shots(shots) -> int:
    """How many demonstration turns `shots` (true, false or a count) asks for."""
    if isinstance(shots, bool):
        return len(probe_data.SHOTS) if shots else 0
    if not isinstance(shots, int) or not 0 <= shots <= len(probe_data.SHOTS):
        raise ValueError(
            f"shots must be true, false or a count in 0..{len(probe_data.SHOTS)}, got {shots!r}"
        )
    return shots


def _probe_ids(probe_keep) -> tuple[int, ...]:
    n = len(probe_data.PROBES)
    if probe_keep is None:
        return tuple(range(n))
    if isinstance(probe_keep, (str, bytes)) or not isinstance(probe_keep, Sequence):
        raise ValueError(f"probe_keep must be a list of probe indices or null, got {probe_keep!r}")
    keep = list(probe_keep)
    for i in keep:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise ValueError(f"probe_keep: {i!r} is not a probe index in 0..{n - 1}")
    if not keep:
        raise ValueError("probe_keep is empty: the base model answers no probe (use probes=false)")
    if len(set(keep)) != len(keep):
        raise ValueError("probe_keep repeats an index")
    return tuple(keep)


def pretrained_facts(
    tokenizer_path: str | None = None,
    num_entities: int = 40,
    num_sets: int = 5,
    languages=("en",),
    test_templates: str = "train",
    seed: int = 0,
    include_demo: bool = True,
    probes: bool = True,
    probe_keep: list[int] | None = None,
    texts=TEXTS,
    text_windows_per_task: int = 32,
    general_windows: int = 32,
    tiny: bool = False,
    context: int = 256,
    system: str | None = probe_data.SYSTEM,
    shots: bool | int = True,
) -> PretrainedStream:
    """Knowledge injection into a pretrained chat model (see the module docstring).

    tokenizer_path: the GGUF whose tokenizer is used (default: the cached SmolLM2-135M,
    continual.data.smollm2.smollm2_path). num_entities, num_sets, languages, test_templates,
    seed, include_demo: the fact bank and its test questions, as the `facts` stream. probes:
    add the probe task; probe_keep: the probe indices it holds (null: all). texts: the corpora
    of continual.data.text whose held-out split is measured (bits per token), each
    `text_windows_per_task` windows; general_windows: windows of each one's training split,
    the stream's `general` data; tiny: the corpora's built-in lines instead (no download; the
    whole lines, for tests, both held out and general). context: the most tokens a sequence
    may take (the model's context).
    system: the system message (null: the template's default); shots: the demonstration turns
    of continual.data.probes.SHOTS before every question (true: all six, false: none, n: the
    first n).
    """
    if test_templates not in TEMPLATE_KINDS:
        raise ValueError(f"test_templates must be 'train' or 'heldout', got {test_templates!r}")
    _positive("context", context, 2)
    _positive("text_windows_per_task", text_windows_per_task)
    _positive("general_windows", general_windows)
    if system is not None and not isinstance(system, str):
        raise ValueError(f"system must be a string or null, got {system!r}")
    if isinstance(languages, str):
        languages = (languages,)
    if isinstance(texts, str):
        texts = (texts,)
    texts = tuple(texts)
    if len(set(texts)) != len(texts) or any(t not in text.CORPORA for t in texts):
        raise ValueError(f"texts must be distinct corpora of {', '.join(text.CORPORA)}: {texts}")
    keep = _probe_ids(probe_keep) if probes else ()
    if not probes and probe_keep is not None:
        raise ValueError("probe_keep needs probes=true")
    bank = make_facts(num_entities, num_sets, tuple(languages), seed, include_demo)
    tokenizer = BPETokenizer(read_tokenizer_metadata(tokenizer_path or smollm2_path()))
    demos = tuple(probe_data.SHOTS)[: _shots(shots)]

    def prompt(question):
        return chat_prompt(tokenizer, question, system, demos)

    splits = [
        tuple([p for f in s for p in fact_questions(f, kind)] for kind in ("train", test_templates))
        for s in bank.sets
    ]
    every_probe = [(p.question, p.answer) for p in probe_data.PROBES] if probes else []
    pairs = [p for train, test in splits for p in train + test] + every_probe
    lengths = [sum(map(len, _sequence(tokenizer, q, a, prompt))) - 1 for q, a in pairs]
    width = max(lengths)
    if width > context:
        question = pairs[int(np.argmax(lengths))][0]
        raise ValueError(
            f"the question {question!r} with its answer takes {width} tokens in the chat "
            f"format, more than the context of {context}; raise context (and the model's)"
        )
    mask = np.ones(tokenizer.vocab_size, bool)
    tasks = []
    for i, (train, test) in enumerate(splits):
        tasks.append(
            Task(
                i,
                f"set{i}",
                encode_chat(tokenizer, train, width, prompt),
                encode_chat(tokenizer, test, width, prompt),
                mask,
            )
        )

    def held_out(name, data):
        empty = {k: v[:0] for k, v in data.items()}  # never trained: no training split
        tasks.append(Task(len(tasks), name, empty, data, mask, eval_only=True))

    if probes:
        held_out("probes", encode_chat(tokenizer, [every_probe[i] for i in keep], width, prompt))
    general = []
    for name in texts:
        corpus = text.load_corpus(name, tiny=tiny)
        seen, unseen = (corpus, corpus) if tiny else text.split_corpus(corpus, 0.1, 100)
        held_out(name, text_windows(tokenizer, unseen, width, text_windows_per_task, name))
        general.append(text_windows(tokenizer, seen, width, general_windows, name))
    return PretrainedStream(
        "pretrained_facts",
        tuple(tasks),
        "domain",
        "answers",
        tokenizer.vocab_size,
        tokenizer=tokenizer,
        bank=bank,
        width=width,
        probe_ids=keep,
        system=system,
        shots=demos,
        context=context,
        test_templates=test_templates,
        general={k: np.concatenate([g[k] for g in general]) for k in ("x", "y")}
        if general
        else None,
    )


def probe_matches(apply, params, stream: PretrainedStream, batch_size: int = 8) -> np.ndarray:
    """Whether greedy decoding answers each probe of `stream`'s probe task exactly (canonical
    answer, then the eos): (P,) bool in the order of `stream.probe_ids`, by the teacher-forced
    argmax the `answers` likelihood's exact match reads. `apply(params, x_BxL) -> logits`;
    `batch_size` questions per forward pass (the logits of a batch are B x width x vocab)."""
    task = next((t for t in stream.tasks if t.name == "probes"), None)
    if task is None:
        raise ValueError("the stream has no probe task (probes=false)")
    mask = jnp.ones(stream.num_outputs, bool)

    @jax.jit
    def hits(params, x, y):  # params an argument: closed over, they would be constants
        out = apply(params, x)
        return jax.vmap(answers.metric_fn, in_axes=(0, 0, None))(out, y, mask)

    _positive("batch_size", batch_size)
    x, y = task.test["x"], task.test["y"]
    found = [
        np.asarray(hits(params, x[s : s + batch_size], y[s : s + batch_size]))
        for s in range(0, len(x), batch_size)
    ]
    return np.concatenate(found) > 0.5


def known_probes(stream: PretrainedStream, matches) -> list[int]:
    """The PROBES indices of the probe task's questions that `matches` ((P,) bool per question of
    the task, e.g. `probe_matches` on the base model) marks answered: the stream's probe_keep."""
    matches = np.asarray(matches, bool).reshape(-1)
    if len(matches) != len(stream.probe_ids):
        raise ValueError(
            f"{len(matches)} results for the {len(stream.probe_ids)} questions of the probe task"
        )
    return [i for i, hit in zip(stream.probe_ids, matches.tolist(), strict=True) if hit]


def keep_probes(stream: PretrainedStream, keep) -> PretrainedStream:
    """`stream` with its probe task holding only the PROBES indices `keep` (of those it holds,
    in its order): the same stream as built with probe_keep=keep, without building it again."""
    ids = list(stream.probe_ids)
    keep = list(_probe_ids(list(keep)))
    missing = [i for i in keep if i not in ids]
    if missing:
        raise ValueError(f"probe {missing[0]} is not in the stream's probe task")
    rows = np.array(sorted(ids.index(i) for i in keep))
    tasks = [
        t._replace(test={k: v[rows] for k, v in t.test.items()}) if t.name == "probes" else t
        for t in stream.tasks
    ]
    return dataclasses.replace(stream, tasks=tuple(tasks), probe_ids=tuple(ids[r] for r in rows))
