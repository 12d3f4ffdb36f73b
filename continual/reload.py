"""A finished run read back: its trained language model, and the prompt a retrieval method
gives a question; or a pretrained language model by name (what `continual generate` needs)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax

from continual import models, retrieval, runner
from continual.checkpoint import Checkpointer
from continual.data.text import CharTokenizer


def load_language_model(run_dir: Path, method: str | None = None):
    """(model, params, tokenizer) of a run's method (default: its first): the transformer of
    its config with the parameters of its newest checkpoint, and the run's tokenizer.json."""
    _run_info(run_dir)
    if not (run_dir / "tokenizer.json").exists():
        raise ValueError(f"{str(run_dir)!r} has no tokenizer.json: its stream is not text")
    text = (run_dir / "tokenizer.json").read_text()
    try:
        tokenizer = CharTokenizer.from_json(text)
    except ValueError:  # a pretrained model's subword tokenizer
        from continual.data.bpe import BPETokenizer

        tokenizer = BPETokenizer.from_json(text)
    model, params = load_model(run_dir, method)
    return model, params, tokenizer


def _run_info(run_dir: Path) -> tuple[dict, dict]:
    """(run.json, config.json) of a run directory (not a sweep's)."""
    if not (run_dir / "run.json").exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no run.json)")
    try:
        info = json.loads((run_dir / "run.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the run in {str(run_dir)!r}: {e}") from None
    if info.get("kind") == "sweep":
        raise ValueError(f"{str(run_dir)!r} is a sweep; generate reads a run's methods")
    return info, config


def load_model(run_dir: Path, method: str | None = None):
    """(model, params) of a run's method (default: its first): the transformer its config built
    (a pretrained one read again from its file) with the full parameters of the newest
    checkpoint: the trained part merged into the frozen one, LoRA adapters folded into their
    kernels."""
    info, config = _run_info(run_dir)
    methods = info.get("methods") or []
    method = method or (methods[0] if methods else None)
    if method not in methods:
        raise ValueError(f"unknown method {method!r} (this run has: {', '.join(methods)})")
    if config.get("model", {}).get("name") not in ("transformer", *models.PRETRAINED):
        raise ValueError(f"the model of {str(run_dir)!r} is not a transformer language model")
    spec = config.get("methods", {}).get(method) or {}
    if (spec.get("retrieval") or {}).get("steps") == 0:  # reads with the model as it was built
        config = {**config, "stream": _any_probes(config.get("stream", {}))}
        built = runner.plan(config, [method]).methods[0]
        return built.model, built.full_params(built.params)
    folder = run_dir / method / "checkpoints"
    if not folder.is_dir() or not any(p.name.isdigit() for p in folder.iterdir()):
        raise ValueError(f"method {method!r} of {str(run_dir)!r} has no checkpoint")
    plan = runner.plan({**config, "stream": _any_probes(config.get("stream", {}))}, [method])
    built = plan.methods[0]
    restored = Checkpointer(folder).restore_latest(
        runner.initial_state(built, plan.key), move_aside=False
    )
    if restored is None:
        raise ValueError(f"method {method!r} of {str(run_dir)!r} has no readable checkpoint")
    trainable = jax.tree.map(lambda a: a[0], restored[0].params)  # the run's one member
    if not (run_dir / method / "results.json").exists():
        warnings.warn(f"{method} has not finished; its newest checkpoint is used", stacklevel=2)
    return built.model, built.full_params(trainable)


def _any_probes(stream: dict) -> dict:
    """A stream section whose probe_keep "known" (which asks the model first) is every probe:
    which probes a run kept plays no part in its model or its prompts."""
    return {**stream, "probe_keep": None} if stream.get("probe_keep") == "known" else stream


def prompt_for(run_dir: Path, method: str | None, question: str) -> tuple[str, list[str], bool]:
    """(prompt, retrieved facts, chat) for `continual generate`: a retrieval method's question
    gets the top-k facts of its run's whole store (the stream rebuilt from config.json); a
    stream that asks in a chat format (pretrained_facts) wraps the question in it as its
    questions were asked (chat: True); otherwise the prompt is the question itself."""
    config = json.loads((run_dir / "config.json").read_text())
    methods = json.loads((run_dir / "run.json").read_text()).get("methods") or []
    spec = config.get("methods", {}).get(method or (methods[0] if methods else None), {})
    reader = spec.get("retrieval") if isinstance(spec, dict) else None
    stream_spec = config.get("stream", {})
    chat = stream_spec.get("name") == "pretrained_facts"
    if reader is None and not chat:
        return question, [], False
    stream = runner.build_stream({**config, "stream": _any_probes(stream_spec)})
    prompt, facts = question, []
    if reader is not None:
        prompt, facts = retrieval.retrieve(stream, question, reader.get("k", 1))
    return (stream.prompt(prompt), facts, True) if chat else (prompt, facts, False)


# `continual generate --model NAME`: (model name of continual.models, the context it is built with)
PRETRAINED_LMS = {"smollm2-135m": ("smollm2", 1024)}


def pretrained_language_model(name: str):
    """(model, params, tokenizer) of a pretrained language model by name: continual.models'
    weights (read once per file) and the BPE tokenizer of the same GGUF."""
    from continual.data.bpe import BPETokenizer
    from continual.data.gguf import read_tokenizer_metadata
    from continual.data.smollm2 import smollm2_path

    model_name, context = PRETRAINED_LMS[name]
    tokenizer = BPETokenizer.from_metadata(read_tokenizer_metadata(smollm2_path()))
    model, params = models.pretrained(model_name, tokenizer.vocab_size, context=context)
    return model, params, tokenizer
