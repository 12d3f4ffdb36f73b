"""Retrieval for knowledge injection: a fact store ranked against a question, and its reader.

Retrieval is a method with a "retrieval" section: a character n-gram TF-IDF retriever puts the
`k` stored facts most similar to the question into the prompt, one per line before it
("故宫位于北京市。\\n故宫在哪里?"). A reader model is trained once, on facts about entities that
are not the stream's (the bank's `reader` facts, `reader_task`), to answer from its context, by
the runner's loop like any other method; then each fact set's questions are answered with the
store holding the sets seen so far, without any weight update (`retrieval_results`): row i of its
matrix is exact match with the store after set i, its initial row has an empty store, and
recall@k of the gold fact is recorded beside it.

The retriever scores by character n-gram TF-IDF (scikit-learn's `TfidfVectorizer` with
`analyzer="char_wb"`, imported when a Retriever is built: it would add a second to every start),
the dot product of the question's and each sentence's unnormalised TF-IDF vectors: character
n-grams need no word segmentation, so Chinese (no spaces) and English go through the same code.
Not the cosine: normalising the rows punishes long sentences, and on the fact bank
(make_facts(40, 4), seeds 0 and 1) recall@1 falls from 0.95-0.96 to 0.59-0.61 for training
questions (0.91 to 0.52-0.56 for held-out paraphrases). The retriever runs on the host.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from continual.data.facts import fact_text
from continual.evaluate import evaluate_tasks, summarize
from continual.streams.knowledge import retrieval_prompt
from continual.types import Results, Stream, Task, stack_tasks


class Retriever:
    """Ranks a fixed list of sentences by their TF-IDF dot product with a question."""

    def __init__(self, sentences: Sequence[str], ngram_range: tuple[int, int] = (1, 4)):
        """Fit the vocabulary and inverse document frequencies on `sentences`."""
        if isinstance(sentences, str):
            raise ValueError("sentences must be a sequence of strings, not one string")
        self.sentences = tuple(sentences)
        if not self.sentences:
            raise ValueError("the retrieval store is empty: give at least one sentence")
        if not 1 <= ngram_range[0] <= ngram_range[1]:
            raise ValueError(
                f"ngram_range must be (low, high) with 1 <= low <= high: {ngram_range}"
            )
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True, norm=None
        )
        self._store = self._vectorizer.fit_transform(self.sentences)

    def scores(self, questions: Sequence[str]) -> np.ndarray:
        """TF-IDF dot product of each question with each sentence: (questions, sentences)."""
        if isinstance(questions, str):
            raise ValueError("questions must be a sequence of strings; for one, use top_k")
        return (self._vectorizer.transform(list(questions)) @ self._store.T).toarray()

    def rank(self, questions: Sequence[str], k: int) -> np.ndarray:
        """Indices of the `k` best sentences for each question, best first; ties to lower index."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        order = np.argsort(-self.scores(questions), axis=1, kind="stable")
        return order[:, :k]

    def top_k(self, question: str, k: int) -> list[int]:
        """Indices of the `k` sentences most similar to `question` (fewer if the store is small)."""
        return [int(i) for i in self.rank([question], k)[0]]


def recall_at_k(
    retriever: Retriever, questions: Sequence[str], gold_indices: Sequence[int], k: int
) -> float:
    """The fraction of questions whose gold sentence is among the retriever's top `k`."""
    gold = np.asarray(gold_indices)
    if len(questions) != len(gold):
        raise ValueError(f"{len(questions)} questions but {len(gold)} gold indices")
    if not len(gold):
        raise ValueError("recall_at_k needs at least one question")
    if gold.min() < 0 or gold.max() >= len(retriever.sentences):
        raise ValueError(f"gold indices must be in 0..{len(retriever.sentences) - 1}")
    hits = (retriever.rank(questions, k) == gold[:, None]).any(axis=1)
    return float(hits.mean())


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"retrieval k must be a positive integer, got {k!r}")
    return k


def reader_task(stream: Stream, k: int, seed: int = 0, test_size: int = 512) -> Task:
    """The task that teaches reading: the bank's reader facts, each training question with the
    top-`k` retrieved facts of the reader store in its prompt (the gold fact put in, in place
    of the last, when retrieval missed it), in shuffled order so that the answer is found by
    its entity, not its place. The test split, to follow the training, is plain retrieval for
    at most `test_size` of those questions, evenly spaced."""
    k = _check_k(k)
    reader = stream.bank.reader
    if not reader:
        raise ValueError("retrieval needs reader facts: set stream.reader_entities > 0")
    retriever = Retriever([fact_text(f) for f in reader])
    rng = np.random.default_rng(seed)
    train, test = [], []
    for gold, fact in enumerate(reader):
        pairs = stream.questions(fact, "train")
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
    data = stream.encode_questions(train + test, f"reader prompts ({k} fact(s) each)")
    split = [{key: v[: len(train)] for key, v in data.items()}]
    split.append({key: v[len(train) :] for key, v in data.items()})
    return Task(0, "reader", split[0], split[1], stream.tasks[0].label_mask)


class RetrievalRows:
    """Every fact set's test questions with the top-k facts of the store after each set.

    `data` stacks (T + 1) x T rows: row r * T + j holds set j's questions with the store of
    sets 0..r-1 (r = 0: an empty store, no facts in the prompt); `recall` (T + 1, T) is the
    fraction whose gold fact was retrieved."""

    def __init__(self, stream: Stream, k: int):
        k = _check_k(k)
        sets = stream.bank.sets
        questions, golds = [], []  # per set: its (question, answer) pairs, each fact's index
        for s, fact_set in enumerate(sets):
            first = sum(map(len, sets[:s]))  # the store holds the sets' facts in order
            questions.append([])
            golds.append([])
            for i, fact in enumerate(fact_set):
                pairs = stream.questions(fact, stream.test_templates)
                questions[-1] += pairs
                golds[-1] += [first + i] * len(pairs)
        store: list[str] = []
        rows, recall = [], []
        for r in range(len(sets) + 1):
            retriever = Retriever(store) if store else None
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
        mask = stream.tasks[0].label_mask
        what = f"retrieval prompts ({k} fact(s) before each question; lower k?)"
        data = stream.encode_questions([p for pairs in rows for p in pairs], what)
        ends = np.cumsum([0, *map(len, rows)])
        tasks = [
            Task(i, f"row{i}", {}, {key: v[ends[i] : ends[i + 1]] for key, v in data.items()}, mask)
            for i in range(len(rows))
        ]
        self.k = k
        self.shape = (len(sets) + 1, len(sets))
        self.data = stack_tasks(tasks, "test")
        self.recall = np.array(recall)
        self.masks = np.broadcast_to(mask, (len(tasks), len(mask)))


def _both(objective, params, data, eval_batch: int = 0):
    """The metric and the likelihood's second reading of every task of `data`, each (T,), read
    from one forward pass (in blocks of `eval_batch` examples when > 0)."""
    second = objective.likelihood.second[1]
    bits = objective._replace(likelihood=objective.likelihood._replace(metric_fn=second))
    both = jax.jit(lambda p, d: evaluate_tasks((objective, bits), p, d, None, eval_batch))
    values = np.asarray(both(params, data))
    return values[:, 0], values[:, 1]


def _view(values: np.ndarray, higher_is_better: bool) -> dict:
    initial, matrix = values[0].tolist(), values[1:].tolist()
    return {
        "initial": initial,
        "matrix": matrix,
        "summary": summarize(matrix, initial, higher_is_better),
    }


def _unchanged_eval_only(
    stream, objective, params, reading: str, num_rows: int, eval_batch: int = 0
) -> dict | None:
    """The evaluation-only tasks' columns (Results.eval_only) of a model that no set changes:
    one evaluation, the same before training and after every row (the questions are asked
    without retrieved facts)."""
    held = stream.eval_tasks
    if not held:
        return None
    test = stack_tasks(held, "test")
    values, second = (a.tolist() for a in _both(objective, params, test, eval_batch))
    return {
        "tasks": [t.name for t in held],
        "initial": values,
        "matrix": [values] * num_rows,
        "values": [values] * (num_rows + 1),
        "views": {reading: {"initial": second, "matrix": [second] * num_rows}},
    }


def retrieval_results(
    name: str,
    stream: Stream,
    objective,
    params,
    rows: RetrievalRows,
    steps_per_task: int,
    timing: dict,
    eval_batch: int = 0,
) -> Results:
    """The Results of a reader answering every fact set with retrieval as the sets arrive (and
    the stream's evaluation-only tasks, which retrieval leaves as they were); `eval_batch` as
    train.eval_batch."""
    t0 = time.perf_counter()
    masked = objective._replace(label_masks=jnp.asarray(rows.masks))
    exact, bits = (a.reshape(rows.shape) for a in _both(masked, params, rows.data, eval_batch))
    reading = stream.reading(objective.likelihood.second[0])
    T = len(stream.trained_tasks)
    held = _unchanged_eval_only(stream, objective, params, reading, T, eval_batch)
    timing = {**timing, "evaluate_s": time.perf_counter() - t0}
    names = [t.name for t in stream.trained_tasks]
    matrix, initial = exact[1:].tolist(), exact[0].tolist()
    return Results(
        method=name,
        tasks=names,
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
        rows=names,
        views={
            reading: _view(bits, False),
            f"recall@{rows.k}": _view(rows.recall, True),
        },
        eval_only=held,
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
    baseline trains; 0: none, the model reads as it is, e.g. a pretrained one)}, with "reader"
    (its task, None without training) and "rows" (RetrievalRows) built and checked against the
    stream's and the model's context."""
    if getattr(stream, "bank", None) is None or not hasattr(stream, "encode_questions"):
        raise ValueError("retrieval needs a stream of facts (facts or pretrained_facts)")
    if spec.get("use") or spec.get("joint"):
        raise ValueError("a retrieval method trains a reader once: it takes no 'use' or 'joint'")
    unknown = set(retrieval) - {"k", "steps"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: k, steps)")
    out = {"k": _check_k(retrieval.get("k", 1)), "steps": retrieval.get("steps")}
    steps = out["steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if steps is not None and steps % eval_every:
        raise ValueError(f"steps ({steps}) must be a multiple of train.eval_every ({eval_every})")
    # built now, so that a prompt too long for the context is refused before anything runs
    out["reader"] = None if steps == 0 else reader_task(stream, out["k"], seed)
    out["rows"] = RetrievalRows(stream, out["k"])
    width = out["rows"].data.store.shape[1]
    if out["reader"] is not None:
        width = max(out["reader"].train["x"].shape[1], width)
    if model_context is not None and width > model_context:
        raise ValueError(
            f"prompts with {out['k']} retrieved fact(s) take {width} tokens, more than the "
            f"model's context of {model_context}; raise model.context or lower k"
        )
    return out


def retrieve(stream: Stream, question: str, k: int) -> tuple[str, list[str]]:
    """(prompt, facts): the top-`k` facts of the whole store (every set) put before `question`."""
    store = stream.bank.sentences()
    picked = [store[i] for i in Retriever(store).top_k(question, _check_k(k))]
    return retrieval_prompt(picked, question), picked


def reader_stream(stream: Stream, task: Task) -> Stream:
    """The one-task stream a retrieval method's reader trains on (`reader_task`)."""
    return Stream("reader", (task,), "domain", stream.likelihood, stream.num_outputs)


def reader_results(
    name: str,
    stream: Stream,
    objective,
    params,
    reader: dict,
    steps_per_task: int,
    trained,
    eval_batch: int = 0,
) -> Results:
    """A trained reader's Results: every fact set answered from the store as the sets arrive
    (`retrieval_results`), with `trained` (the reader's own Results, plain retrieval from the
    reader store) as the "reader" view."""
    rows, timing = reader["rows"], trained.timing
    results = retrieval_results(
        name, stream, objective, params, rows, steps_per_task, timing, eval_batch
    )
    if reader["reader"] is None:  # no reader training: nothing more to record
        return results
    results.views["reader"] = {
        "initial": trained.initial,
        "matrix": trained.matrix,
        "summary": trained.summary,
    }
    return results
