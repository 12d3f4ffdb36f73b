"""Knowledge injection, the article's question: facts as tasks for a character language model,
exact match of greedy answers, and retrieval that puts facts into the prompt.

The `facts` stream (facts from continual.data.facts): each task is one fact set; an example is a
question followed by its answer and [end] ("故宫在哪里?在北京[end]"), and the loss and metrics read
the answer's characters only (the question's targets are [pad]). The metric is exact match of the
greedy answer decoded until [end], computed in one teacher-forced forward pass: greedy decoding
from the question reproduces the answer and then [end] exactly when, at every answer position, the
likeliest next token given the question and the answer so far is the right one (so the metric
runs inside the compiled evaluation; tests check it against `generate`). Bits per character on
the answers is the second reading.

Retrieval (a method with a "retrieval" section, see `run_retrieval`): a character n-gram TF-IDF
retriever (continual.retrieval) puts the `k` stored facts most similar to the question into the
prompt, one per line before it ("故宫位于北京市。\\n故宫在哪里?"). A reader model is trained once,
on facts about entities that are not the stream's (the bank's `reader` facts), to answer from its
context; then each fact set's questions are answered with the store holding the sets seen so far,
without any weight update: row i of its matrix is exact match with the store after set i, its
initial row has an empty store, and recall@k of the gold fact is recorded beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
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
from continual.evaluate import evaluate_tasks, summarize
from continual.types import Results, Stream, Task, stack_tasks

SEPARATOR = "\n"  # between the retrieved facts and the question


def _retriever(sentences):
    """A Retriever (imported here: scikit-learn would add a second to every `continual` start)."""
    from continual.retrieval import Retriever

    return Retriever(sentences)


@dataclass(frozen=True)
class FactStream(Stream):
    """A stream of question -> answer sequences over a bank of facts, one task per fact set."""

    tokenizer: CharTokenizer | None = None
    bank: FactBank | None = None
    context: int = 0  # the longest sequence any prompt (retrieved facts included) may take
    test_templates: str = "train"  # which question templates the test splits use


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
    prompts included (see `run_retrieval`).
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


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"retrieval k must be a positive integer, got {k!r}")
    return k


def reader_task(stream: FactStream, k: int, seed: int = 0, test_size: int = 512) -> Task:
    """The task that teaches reading: the bank's reader facts, each training question with the
    top-`k` retrieved facts of the reader store in its prompt (the gold fact put in, in place
    of the last, when retrieval missed it), in shuffled order so that the answer is found by
    its entity, not its place. The test split, to follow the training, is plain retrieval for
    at most `test_size` of those questions, evenly spaced."""
    k = _check_k(k)
    reader = stream.bank.reader
    if not reader:
        raise ValueError("retrieval needs reader facts: set stream.reader_entities > 0")
    retriever = _retriever([fact_text(f) for f in reader])
    rng = np.random.default_rng(seed)
    train, test = [], []
    for gold, fact in enumerate(reader):
        pairs = renderings(fact, "train")
        top = retriever.rank([q for q, _ in pairs], k)
        for (question, answer), picked in zip(pairs, top.tolist(), strict=True):
            test.append(
                (retrieval_prompt([retriever.sentences[i] for i in picked], question), answer)
            )
            if gold not in picked:
                picked[-1] = gold
            rng.shuffle(picked)
            train.append(
                (retrieval_prompt([retriever.sentences[i] for i in picked], question), answer)
            )
    test = [test[i] for i in np.linspace(0, len(test) - 1, min(test_size, len(test))).astype(int)]
    width = max(len(q) + len(a) for q, a in train + test)
    mask = stream.tasks[0].label_mask
    data = [
        encode_pairs(
            stream.tokenizer, p, stream.context, f"reader prompts ({k} fact(s) each)", width
        )
        for p in (train, test)
    ]
    return Task(0, "reader", data[0], data[1], mask)


class RetrievalRows:
    """Every fact set's test questions with the top-k facts of the store after each set.

    `data` stacks (T + 1) x T rows: row r * T + j holds set j's questions with the store of
    sets 0..r-1 (r = 0: an empty store, no facts in the prompt); `recall` (T + 1, T) is the
    fraction whose gold fact was retrieved."""

    def __init__(self, stream: FactStream, k: int):
        k = _check_k(k)
        sets = stream.bank.sets
        questions, golds = [], []  # per set: its (question, answer) pairs, each fact's index
        for s, fact_set in enumerate(sets):
            first = sum(map(len, sets[:s]))  # the store holds the sets' facts in order
            questions.append([])
            golds.append([])
            for i, fact in enumerate(fact_set):
                pairs = renderings(fact, stream.test_templates)
                questions[-1] += pairs
                golds[-1] += [first + i] * len(pairs)
        store: list[str] = []
        rows, recall = [], []
        for r in range(len(sets) + 1):
            retriever = _retriever(store) if store else None
            recall.append([])
            for pairs, gold in zip(questions, golds, strict=True):
                if retriever is None:
                    picked = np.zeros((len(pairs), 0), np.int64)
                else:
                    picked = retriever.rank([q for q, _ in pairs], k)
                recall[-1].append(float((picked == np.array(gold)[:, None]).any(axis=1).mean()))
                rows.append(
                    [
                        (retrieval_prompt([store[i] for i in p], q), a)
                        for (q, a), p in zip(pairs, picked.tolist(), strict=True)
                    ]
                )
            if r < len(sets):
                store += [fact_text(f) for f in sets[r]]
        width = max(len(q) + len(a) for pairs in rows for q, a in pairs)
        mask = stream.tasks[0].label_mask
        what = f"retrieval prompts ({k} fact(s) before each question; lower k?)"
        tasks = [
            Task(
                i,
                f"row{i}",
                {},
                encode_pairs(stream.tokenizer, p, stream.context, what, width),
                mask,
            )
            for i, p in enumerate(rows)
        ]
        self.k = k
        self.shape = (len(sets) + 1, len(sets))
        self.data = stack_tasks(tasks, "test")
        self.recall = np.array(recall)
        self.masks = np.broadcast_to(mask, (len(tasks), len(mask)))


def _evaluate(objective, params, rows: RetrievalRows) -> tuple[np.ndarray, np.ndarray]:
    """Exact match and bits per character of every row, each (T + 1, T)."""
    masked = objective._replace(label_masks=jnp.asarray(rows.masks))
    second = objective.likelihood.second[1]
    bits = masked._replace(likelihood=masked.likelihood._replace(metric_fn=second))

    @jax.jit
    def both(params, data):
        return evaluate_tasks(masked, params, data), evaluate_tasks(bits, params, data)

    exact, bpc = both(params, rows.data)
    return np.asarray(exact).reshape(rows.shape), np.asarray(bpc).reshape(rows.shape)


def _view(values: np.ndarray, higher_is_better: bool) -> dict:
    initial, matrix = values[0].tolist(), values[1:].tolist()
    return {
        "initial": initial,
        "matrix": matrix,
        "summary": summarize(matrix, initial, higher_is_better),
    }


def retrieval_results(
    name: str,
    stream: FactStream,
    objective,
    params,
    rows: RetrievalRows,
    steps_per_task: int,
    timing: dict,
) -> Results:
    """The Results of a reader answering every fact set with retrieval as the sets arrive."""
    t0 = time.perf_counter()
    exact, bpc = _evaluate(objective, params, rows)
    timing = {**timing, "evaluate_s": time.perf_counter() - t0}
    T = len(stream.tasks)
    matrix, initial = exact[1:].tolist(), exact[0].tolist()
    return Results(
        method=name,
        tasks=stream.task_names,
        metric=objective.likelihood.metric,
        higher_is_better=True,
        matrix=matrix,
        initial=initial,
        summary=summarize(matrix, initial, True),
        # the store changes when a set arrives, at the step where a fine-tuned model's task ends
        curves={
            "step": [steps_per_task * r for r in range(T + 1)],
            "training_task": [0, *range(T)],
            "values": exact.tolist(),
        },
        timing=timing,
        rows=stream.task_names,
        views={
            "bits_per_char": _view(bpc, False),
            f"recall@{rows.k}": _view(rows.recall, True),
        },
    )


def check_retrieval(
    stream,
    spec: dict,
    retrieval: dict,
    eval_every: int = 1,
    seed: int = 0,
    model_context: int | None = None,
) -> dict:
    """The checked "retrieval" section of a method, {"k": top facts in the prompt, "steps":
    reader training steps (default: the stream's steps per task times its tasks, what the joint
    baseline trains)}, with "reader" (its task) and "rows" (RetrievalRows) built and checked
    against the stream's and the model's context."""
    if not isinstance(stream, FactStream):
        raise ValueError("retrieval needs the facts stream (stream.name = facts)")
    if spec.get("use") or spec.get("joint"):
        raise ValueError("a retrieval method trains a reader once: it takes no 'use' or 'joint'")
    unknown = set(retrieval) - {"k", "steps"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: k, steps)")
    out = {"k": _check_k(retrieval.get("k", 1)), "steps": retrieval.get("steps")}
    steps = out["steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps is not None and steps % eval_every:
        raise ValueError(f"steps ({steps}) must be a multiple of train.eval_every ({eval_every})")
    # built now, so that a prompt too long for the context is refused before anything runs
    out["reader"] = reader_task(stream, out["k"], seed)
    out["rows"] = RetrievalRows(stream, out["k"])
    width = max(out["reader"].train["x"].shape[1], out["rows"].data.store.shape[1])
    if model_context is not None and width > model_context:
        raise ValueError(
            f"prompts with {out['k']} retrieved fact(s) take {width} tokens, more than the "
            f"model's context of {model_context}; raise model.context or lower k"
        )
    return out


def run_retrieval(plan, method, settings, folder: Path | None, resume, on_steps, should_stop):
    """Trains `method`'s model as a reader of retrieved facts (`reader_task`), with the runner's
    loop and checkpoints in `folder`, then answers every fact set of the plan's stream as the
    sets arrive (`retrieval_results`)."""
    from continual import runner
    from continual.checkpoint import checkpoint_settings, checkpointing
    from continual.loop import compile_program, run_program

    stream, per_task = plan.stream, settings.steps
    steps = method.retrieval["steps"] or per_task * len(stream.tasks)  # a multiple of eval_every
    settings = settings._replace(steps=steps, record_params=False)
    task = method.retrieval["reader"]
    reader = Stream("reader", (task,), "domain", stream.likelihood, stream.num_outputs)
    train, test = stack_tasks(reader.tasks, "train"), stack_tasks(reader.tasks, "test")
    state = runner.initial_state(method, plan.key)
    program, states = compile_program(method, state, reader, train, test, settings)
    progress, save = None, None
    if folder is not None:
        states, progress, save = checkpointing(folder, plan.config, program, states, resume)
    final = {}
    (trained,) = run_program(
        method,
        program,
        states,
        reader,
        train,
        test,
        settings,
        on_steps=on_steps,
        stop_on_divergence=True,
        progress=progress,
        checkpoint=save,
        checkpoint_every=checkpoint_settings(plan.config)["every_chunks"],
        should_stop=should_stop,
        on_finish=lambda states: final.update(params=jax.tree.map(lambda a: a[0], states.params)),
    )
    results = retrieval_results(
        method.name,
        stream,
        method.objective,
        final["params"],
        method.retrieval["rows"],
        per_task,
        trained.timing,
    )
    # the reader on its own facts' questions (plain retrieval from the reader store)
    results.views["reader"] = {
        "initial": trained.initial,
        "matrix": trained.matrix,
        "summary": trained.summary,
    }
    return results


def retrieve(stream: FactStream, question: str, k: int) -> tuple[str, list[str]]:
    """(prompt, facts): the top-`k` facts of the whole store (every set) put before `question`."""
    store = stream.bank.sentences()
    picked = [store[i] for i in _retriever(store).top_k(question, _check_k(k))]
    return retrieval_prompt(picked, question), picked


def prompt_for(run_dir: Path, method: str | None, question: str) -> tuple[str, list[str]]:
    """(prompt, retrieved facts) for `continual generate`: a retrieval method's question gets the
    top-k facts of its run's whole store (the stream rebuilt from config.json); any other
    method's prompt is the question itself."""
    import json

    from continual import runner

    config = json.loads((run_dir / "config.json").read_text())
    methods = json.loads((run_dir / "run.json").read_text()).get("methods") or []
    spec = config.get("methods", {}).get(method or (methods[0] if methods else None), {})
    retrieval = spec.get("retrieval") if isinstance(spec, dict) else None
    if retrieval is None:
        return question, []
    stream = runner.build_stream(config)
    return retrieve(stream, question, retrieval.get("k", 1))
