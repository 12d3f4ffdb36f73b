"""Task-stream factories: the article's linear toy, split, permuted and rotated streams of
classification sources (MNIST, Fashion-MNIST, MNIST-1D, synthetic blobs), text domains, and
facts (continual.streams.knowledge)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from continual.data import mnist, mnist1d, synthetic, text, toy
from continual.streams.knowledge import facts
from continual.streams.pretrained import pretrained_facts
from continual.types import SCENARIOS, Stream, Task


def linear_toy(tasks=(toy.TASK_A, toy.TASK_B), names=None) -> Stream:
    """Regression tasks of (x, y) points for f(x) = ax + b; the default is the article's A then B.

    Each task's test set is its own training points: the question is how well the model still fits
    the points it was taught.
    """
    tasks = tuple(tasks)
    if not tasks or any(len(t) == 0 for t in tasks):
        raise ValueError("linear_toy needs at least one task with at least one (x, y) point")
    names = names or [chr(ord("A") + i) for i in range(len(tasks))]
    built = []
    for i, pairs in enumerate(tasks):
        data = toy.points(pairs)
        built.append(Task(i, names[i], data, data, np.ones(1, bool)))
    probes = np.concatenate([t.train["x"] for t in built])
    return Stream("linear_toy", tuple(built), "domain", "gaussian", 1, probes=probes)


CLASS_ORDERS = ("sorted", "shuffled")


def ordered_classes(classes, class_order=None, class_seed: int = 0) -> np.ndarray:
    """`classes` in the order the tasks take them.

    None or "sorted": ascending. "shuffled": van de Ven et al.'s draw for seed `class_seed`
    (their code seeds numpy's global generator, relabels class c as p[c] with
    p = np.random.permutation(n), and gives each task the next new labels): the classes ordered
    by their new label; seed 0 keeps them sorted, as their code does (`exception=(seed==0)`).
    A list: that order, which must hold every class once.
    """
    classes = np.asarray(classes)
    if class_order is None or isinstance(class_order, str):
        if class_order in (None, "sorted"):
            return classes
        if class_order != "shuffled":
            raise ValueError(
                f"unknown class_order {class_order!r}; choose one of {', '.join(CLASS_ORDERS)} "
                "or give a list of the classes"
            )
        if isinstance(class_seed, bool) or not isinstance(class_seed, int) or class_seed < 0:
            raise ValueError(f"class_seed must be an integer >= 0, got {class_seed!r}")
        if class_seed == 0:
            return classes
        relabel = np.random.RandomState(class_seed).permutation(len(classes))
        return classes[np.argsort(relabel)]
    order = np.asarray(class_order)
    if order.ndim != 1 or sorted(order.tolist()) != sorted(classes.tolist()):
        raise ValueError(
            f"class_order {class_order!r} must list each of the classes "
            f"{classes.tolist()} exactly once"
        )
    return order.astype(classes.dtype)


def split(
    name: str,
    x_train,
    y_train,
    x_test,
    y_test,
    num_tasks: int,
    scenario: str = "task",
    class_order=None,
    class_seed: int = 0,
) -> Stream:
    """Splits a classification source into tasks of consecutive classes, in the order
    `ordered_classes(classes, class_order, class_seed)` gives.

    task: all classes are outputs, each task masks the others' (multi-head);
    class: all classes are outputs and nothing is masked (one head, no task identity);
    domain: labels are relabelled to their index within the task, in that order (shared head of
    that size).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    classes = ordered_classes(np.unique(y_train), class_order, class_seed)
    if num_tasks < 1 or len(classes) % num_tasks:
        raise ValueError(f"cannot split {len(classes)} classes into {num_tasks} equal tasks")
    per_task = len(classes) // num_tasks
    num_outputs = per_task if scenario == "domain" else len(classes)
    tasks = []
    for t in range(num_tasks):
        own = classes[t * per_task : (t + 1) * per_task]

        def pick(x, y, own=own):
            keep = np.isin(y, own)
            y = y[keep]
            if scenario == "domain":
                y = np.argmax(y[:, None] == own[None, :], axis=1)
            return {"x": x[keep], "y": y.astype(np.int32)}

        if scenario == "task":
            mask = np.isin(np.arange(num_outputs), own)
        else:
            mask = np.ones(num_outputs, bool)
        label = "-".join(str(c) for c in own)
        tasks.append(
            Task(t, f"{name}[{label}]", pick(x_train, y_train), pick(x_test, y_test), mask)
        )
    return Stream(f"split_{name}", tuple(tasks), scenario, "categorical", num_outputs)


def split_blobs(
    num_tasks: int = 5,
    scenario: str = "task",
    num_classes: int = 10,
    dim: int = 20,
    train_per_class: int = 100,
    test_per_class: int = 50,
    spread: float = 1.0,
    seed: int = 0,
    class_order=None,
    class_seed: int = 0,
) -> Stream:
    """Synthetic Gaussian blobs split into tasks: a classification stream with no download."""
    data = synthetic.blobs(num_classes, dim, train_per_class, test_per_class, spread, seed)
    return split("blobs", *data, num_tasks, scenario, class_order, class_seed)


def split_mnist1d(
    num_tasks: int = 5, scenario: str = "class", class_order=None, class_seed: int = 0
) -> Stream:
    """MNIST-1D's ten digits split into tasks (generated, no download); `class_order` as `split`."""
    return split("mnist1d", *mnist1d.load(), num_tasks, scenario, class_order, class_seed)


def _images(name: str):
    """(N, 28, 28, 1) uint8 images (read as k/255 by TaskData) and int32 labels."""
    x_train, y_train, x_test, y_test = mnist.load(name)
    return x_train[..., None], y_train, x_test[..., None], y_test


SOURCES = {
    "mnist": lambda: _images("mnist"),
    "fashion_mnist": lambda: _images("fashion_mnist"),
    "mnist1d": mnist1d.load,
}


def _source(source: str):
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[source]()


def split_source(
    source: str = "mnist",
    num_tasks: int = 5,
    scenario: str = "class",
    class_order=None,
    class_seed: int = 0,
) -> Stream:
    """A source's classes split into `num_tasks` tasks; `class_order` as `split`."""
    return split(source, *_source(source), num_tasks, scenario, class_order, class_seed)


def transformed(
    name: str, x_train, y_train, x_test, y_test, pixels: list, names: list[str], scenario: str
) -> Stream:
    """One task per input transform of the whole source (`pixels`: (index, weight) per task, see
    Task), all tasks sharing the source's arrays.

    domain: the classes share one head; task: one head per task (labels offset by task, other
    heads masked); class: one head per task, nothing masked.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    per_head = scenario != "domain"
    num_outputs = num_classes * (len(pixels) if per_head else 1)
    y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
    tasks = []
    for t, transform in enumerate(pixels):
        offset = np.int32(t * num_classes if per_head else 0)
        mask = np.ones(num_outputs, bool)
        if scenario == "task":
            mask[:] = False
            mask[offset : offset + num_classes] = True
        train = {"x": x_train, "y": y_train + offset}
        test = {"x": x_test, "y": y_test + offset}
        tasks.append(Task(t, f"{name}[{names[t]}]", train, test, mask, transform))
    return Stream(name, tuple(tasks), scenario, "categorical", num_outputs)


def permutations(num_tasks: int, dim: int, seed: int) -> list:
    """Input transforms: the identity for the first task, then random pixel permutations."""
    rng = np.random.default_rng(seed)
    ones = np.ones((1, dim), np.float32)
    index = [np.arange(dim)] + [rng.permutation(dim) for _ in range(num_tasks - 1)]
    return [(i.astype(np.int32)[None], ones) for i in index]


def rotation(shape: tuple[int, ...], degrees: float):
    """Input transform rotating (H, W[, 1]) images by `degrees` about their centre, bilinearly
    interpolated; pixels rotated in from outside the image are 0."""
    h, w = shape[:2]
    theta = np.deg2rad(degrees)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # Where each output pixel comes from: the inverse rotation of its coordinates.
    sy = cy + (rows - cy) * np.cos(theta) - (cols - cx) * np.sin(theta)
    sx = cx + (rows - cy) * np.sin(theta) + (cols - cx) * np.cos(theta)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    index, weight = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            wgt = (1 - np.abs(sy - yy)) * (1 - np.abs(sx - xx))
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            index.append(np.where(inside, yy * w + xx, 0).ravel())
            weight.append(np.where(inside, wgt, 0.0).ravel())
    return np.stack(index).astype(np.int32), np.stack(weight).astype(np.float32)


def permuted(
    source: str = "mnist", num_tasks: int = 10, scenario: str = "domain", seed: int = 0
) -> Stream:
    """Permuted `source`: task 0 the original inputs, each later task a fixed random permutation
    of the input features (applied on the fly: one copy of the data)."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    data = _source(source)
    dim = int(np.prod(data[0].shape[1:]))
    names = ["original"] + [f"perm{t}" for t in range(1, num_tasks)]
    pixels = permutations(num_tasks, dim, seed)
    return transformed(f"permuted_{source}", *data, pixels, names, scenario)


def rotated(
    source: str = "mnist", num_tasks: int = 5, max_degrees: float = 180.0, scenario="domain"
) -> Stream:
    """Rotated `source`: task t shows the images rotated by t * max_degrees / num_tasks."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    data = _source(source)
    shape = data[0].shape[1:]
    if len(shape) < 2 or (len(shape) == 3 and shape[2] != 1):
        raise ValueError(f"rotated needs one-channel 2-D images; {source} inputs are {shape}")
    angles = [t * max_degrees / num_tasks for t in range(num_tasks)]
    names = [f"{a:g}deg" for a in angles]
    pixels = [rotation(shape, a) for a in angles]
    return transformed(f"rotated_{source}", *data, pixels, names, scenario)


@dataclass(frozen=True)
class TextStream(Stream):
    """A stream of token windows that carries the tokenizer its ids decode with."""

    tokenizer: text.CharTokenizer | None = None


def spaced_windows(ids: np.ndarray, context: int, count: int):
    """`count` windows (x_NxL, y_NxL) of L = `context` tokens (y is x shifted by one), their
    starts evenly spaced from the first token to the last full window (they overlap when the
    text is shorter than count x (context + 1))."""
    if len(ids) < context + 1:
        raise ValueError(f"{len(ids)} tokens make no window of {context} + 1 tokens")
    starts_N = np.linspace(0, len(ids) - context - 1, count).round().astype(np.int64)
    w_NxL1 = np.asarray(ids, np.int32)[starts_N[:, None] + np.arange(context + 1)[None, :]]
    return np.ascontiguousarray(w_NxL1[:, :-1]), np.ascontiguousarray(w_NxL1[:, 1:])


def text_domains(
    domains=("english", "python", "chinese_news"),
    context: int = 64,
    train_windows: int = 512,
    test_windows: int = 64,
    min_count: int = 1,
    test_fraction: float = 0.1,
    tiny: bool = False,
) -> TextStream:
    """Domain-incremental language modelling: one task per corpus of continual.data.text, in order.

    One character tokenizer is built from every domain's training split (characters occurring
    fewer than `min_count` times there read as [unk]), so the vocabulary, the number of outputs,
    never changes. Each task holds `train_windows` and `test_windows` windows of `context`
    tokens, evenly spaced over its training and test splits (split_corpus: 100 blocks, the tail
    of each held out; one block for the built-in `tiny` texts). Every output but [pad] is allowed.
    """
    domains = list(domains)
    if not domains or len(set(domains)) != len(domains):
        raise ValueError(f"domains must be distinct corpora of {', '.join(text.CORPORA)}")
    for name, value in (
        ("context", context),
        ("train_windows", train_windows),
        ("test_windows", test_windows),
        ("min_count", min_count),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    splits = [
        text.split_corpus(text.load_corpus(d, tiny=tiny), test_fraction, 1 if tiny else 100)
        for d in domains
    ]
    tokenizer = text.CharTokenizer.build([train for train, _ in splits], min_count)
    mask = np.ones(tokenizer.vocab_size, bool)
    mask[text.PAD] = False
    tasks = []
    for i, (name, parts) in enumerate(zip(domains, splits, strict=True)):
        data = []
        for part, count in zip(parts, (train_windows, test_windows), strict=True):
            try:
                x, y = spaced_windows(tokenizer.encode(part), context, count)
            except ValueError as e:
                raise ValueError(f"domain {name}: {e}; use a shorter context") from None
            data.append({"x": x, "y": y})
        tasks.append(Task(i, name, data[0], data[1], mask))
    return TextStream(
        "text_domains",
        tuple(tasks),
        "domain",
        "next_token",
        tokenizer.vocab_size,
        tokenizer=tokenizer,
    )


TRAIN_OUTPUTS = ("all", "seen")


def train_outputs(stream: Stream, which: str = "all") -> Stream:
    """`stream` with the outputs its training may use: "all" (unchanged), or "seen": while task
    t is trained, only the classes that occurred in the training labels of tasks 0..t (van de
    Ven et al.'s `--active-classes all-so-far`, iCaRL's choice, but for their LwF's zero targets
    on the current classes; replayed examples and the Fisher meet the same classes). Evaluation
    still reads every output its label mask allows."""
    if which not in TRAIN_OUTPUTS:
        raise ValueError(f"train_outputs must be one of {', '.join(TRAIN_OUTPUTS)}, got {which!r}")
    if which == "all":
        return stream
    if stream.likelihood != "categorical":
        raise ValueError(f"train_outputs='seen' needs class labels; {stream.name} has none")
    seen = np.zeros(stream.num_outputs, bool)
    tasks = []
    for t in stream.tasks:
        seen = seen.copy()
        seen[np.unique(np.asarray(t.train["y"]))] = True
        tasks.append(t._replace(outputs=seen))
    return replace(stream, tasks=tuple(tasks))


# The streams that take `class_order` and `class_seed`.
SPLIT_STREAMS = ("split_blobs", "split_mnist1d", "split")

STREAMS = {
    "linear_toy": linear_toy,
    "split_blobs": split_blobs,
    "split_mnist1d": split_mnist1d,
    "split": split_source,
    "permuted": permuted,
    "rotated": rotated,
    "text_domains": text_domains,
    "facts": facts,
    "pretrained_facts": pretrained_facts,
}
