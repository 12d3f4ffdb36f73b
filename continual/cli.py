"""The `continual` command: run | sweep | resume | list | plot | generate.

Bad input (unknown names, wrong types, negative strengths, missing directories) is reported as one
line `continual: error: ...` with exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path

from absl import logging as absl_logging

from continual import rundir
from continual.faults import fault_point

PRETRAINED_LMS = ("smollm2-135m",)  # continual generate --model (continual.reload)

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of argparse's usage dump
        raise SystemExit(_fail(message))


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"continual: error: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="continual", description="Continual learning experiments in JAX.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run an experiment and write its run directory")
    r.add_argument(
        "experiment", help="experiment name (see `continual list`) or path to a .py file, [:ARG]"
    )
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set regularisers.ewc.strength=10",
    )
    r.add_argument(
        "--method",
        dest="methods",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this method (repeatable)",
    )
    r.add_argument("--arg", default=None, help="the argument passed to get_config(arg)")
    r.add_argument("--smoke", action="store_true", help="the experiment's SMOKE size (seconds)")
    r.add_argument("--out", default="runs", help="parent of the run directory (default: runs)")
    r.add_argument("--name", default=None, help="run directory name (default: a time stamp)")
    again = r.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run directory (--name, or the newest) from its checkpoints",
    )
    again.add_argument("--overwrite", action="store_true", help="replace an existing --name run")
    r.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: accept a config that differs from the run's",
    )
    r.add_argument("--no-plots", action="store_true", help="skip the figures")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    rs = sub.add_parser("resume", help="continue an interrupted run from its newest checkpoint")
    rs.add_argument("run_dir")
    rs.add_argument("--no-plots", action="store_true")
    rs.add_argument("--quiet", action="store_true")
    sw = sub.add_parser("sweep", help="train hyperparameter values x seeds as one program")
    sw.add_argument(
        "experiment", help="experiment name (see `continual list`) or path to a .py file, [:ARG]"
    )
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a vmapped member axis of continuous values; LOW:HIGH:COUNT is "
        "log-spaced, e.g. --grid regularisers.ewc.strength=1e0:1e6:7",
    )
    sw.add_argument("--seeds", type=int, default=1, help="seeds per grid point (default 1)")
    sw.add_argument(
        "--outer",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values that change the program (sizes, estimators): one program each",
    )
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sw.add_argument("--method", dest="methods", action="append", default=None, metavar="NAME")
    sw.add_argument("--arg", default=None)
    sw.add_argument("--smoke", action="store_true", help="the experiment's SMOKE size")
    sw.add_argument("--out", default="runs")
    sw.add_argument("--name", default=None, help="sweep directory name (default: a stamp)")
    again = sw.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the sweep directory")
    again.add_argument("--overwrite", action="store_true")
    sw.add_argument("--allow-config-change", action="store_true")
    sw.add_argument("--no-plots", action="store_true")
    sw.add_argument("--quiet", action="store_true")
    sw.add_argument(
        "--distributed",
        action="store_true",
        help="run as one of several processes (multi-host): the same command in each; "
        "process 0 writes the sweep directory",
    )
    sw.add_argument("--coordinator", default=None, metavar="HOST:PORT")
    sw.add_argument("--num-processes", type=int, default=None, metavar="N")
    sw.add_argument("--process-id", type=int, default=None, metavar="I")
    sub.add_parser("list", help="list experiments, methods and regularisers")
    t = sub.add_parser(
        "table", help="every run and sweep under the directories as one long table (CSV)"
    )
    t.add_argument("dirs", nargs="+", metavar="DIR", help="run or sweep directories, or parents")
    t.add_argument(
        "--summary",
        action="store_true",
        help="average, forgetting, BWT, FWT per method and member: mean and sd over seeds",
    )
    t.add_argument(
        "--out",
        default=None,
        metavar="FILE.csv",
        help="where to write it (default: table.csv, or summary.csv with --summary); a .parquet "
        "beside it when pyarrow is installed",
    )
    t.add_argument(
        "--rows", type=int, default=20, metavar="N", help="print the first N rows (default 20)"
    )
    pl = sub.add_parser(
        "plot",
        help="redraw a run's figures; or compare every run and sweep under several directories",
    )
    pl.add_argument(
        "run_dirs",
        nargs="+",
        metavar="DIR",
        help="one run directory (its figures, redrawn in place), or run and sweep directories "
        "or their parents (figures comparing them all, in --out)",
    )
    pl.add_argument("--out", default="plots", help="where comparison figures go (default: plots)")
    g = sub.add_parser(
        "generate",
        help="continue a prompt with a language model a run trained, or a pretrained one",
    )
    g.add_argument("run_dir", nargs="?", default=None, help="a run directory (or give --model)")
    g.add_argument(
        "--model",
        default=None,
        choices=sorted(PRETRAINED_LMS),  # continual.reload
        help="a pretrained model, no run needed (its GGUF is fetched into the cache once)",
    )
    g.add_argument("--raw", action="store_true", help="with --model: no chat template")
    g.add_argument("--method", default=None, help="whose final model (default: the first)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: all)")
    g.add_argument(
        "--show-top", type=int, default=0, metavar="N", help="print the N likeliest at each step"
    )
    g.add_argument("--seed", type=int, default=0)
    return p


def _plots(module, stream, all_results, run_dir: Path) -> list[Path]:
    from continual import plots

    paths = plots.plot_run(all_results, run_dir / "plots")
    if stream is not None and hasattr(module, "plot"):
        paths += module.plot(all_results, stream, run_dir / "plots") or []
    return paths


def _enable_compilation_cache() -> None:
    """Keeps compiled programs on disk ($CONTINUAL_CACHE/jax, default ~/.cache/continual/jax),
    so that a second run of the same experiment skips XLA compilation. CONTINUAL_CACHE=off
    turns it off."""
    import jax

    root = os.environ.get("CONTINUAL_CACHE", str(Path.home() / ".cache" / "continual"))
    if root.lower() == "off":
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(root) / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _experiment(args):
    """(module, config, spec): the command's experiment loaded, its config with --smoke and
    --set applied, and how run.json names it (a file by its absolute path, so that a resume
    finds it). args.experiment becomes the name its run directories go under."""
    from continual import config as cfg
    from continual import runner

    experiment, arg = cfg.split_experiment(args.experiment, args.arg)
    module = cfg.load_experiment(experiment)
    base, shrink = cfg.experiment_config(module, arg, getattr(args, "smoke", False))
    config = runner.configure(base, shrink + args.overrides)
    spec = str(Path(experiment).resolve()) if cfg.is_path(experiment) else experiment
    args.experiment = cfg.experiment_name(experiment)
    return module, config, spec


def _run(args) -> int:
    from continual import runner

    _enable_compilation_cache()
    module, config, spec = _experiment(args)
    args.stop.check(NOTHING_WRITTEN)
    plan = runner.plan(config, args.methods)
    args.stop.check(NOTHING_WRITTEN)
    request = {"experiment": spec, "methods": [m.name for m in plan.methods]}
    run_dir, resume = rundir.choose(args, config, request)
    return _execute(args, module, plan, run_dir, resume, request)


def _resume(args) -> int:
    from continual import runner
    from continual.config import load_experiment

    run_dir = Path(args.run_dir)
    meta = run_dir / "run.json"
    if not meta.exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no run.json)")
    try:
        info = json.loads(meta.read_text())
        config = json.loads((run_dir / "config.json").read_text())
        needed = ("experiment", "grid", "outer", "seeds") if info.get("kind") == "sweep" else ()
        if not isinstance(config, dict) or any(k not in info for k in ("methods", *needed)):
            raise ValueError("run.json or config.json lacks what a resume needs")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"cannot read the run in {str(run_dir)!r}: {e}") from None
    rundir.check_unchanged(run_dir, config, info)
    config = runner.with_defaults(config)  # a key added since the run was made: its default
    _enable_compilation_cache()
    if info.get("kind") == "sweep":
        for key in ("experiment", "grid", "outer", "seeds", "methods"):
            setattr(args, key, info[key])
        args.out, args.name, args.resume = str(run_dir.parent.parent), run_dir.name, True
        args.overrides, args.arg = [], None
        args.allow_config_change = args.overwrite = False
        return _sweep(args, config)
    module = load_experiment(info["experiment"])
    plan = runner.plan(config, info["methods"])
    args.stop.check(NOTHING_WRITTEN)
    args.experiment = info["experiment"]
    return _execute(args, module, plan, run_dir, True, info)


def _execute(args, module, plan, run_dir: Path, resume: bool, request: dict) -> int:
    from continual import results as res
    from continual import runner
    from continual.loop import Interrupted

    if not resume:
        rundir.create(run_dir, plan.config, request)
    rundir.lock(run_dir)  # (`continual resume DIR` comes here without choosing)
    for m in plan.methods if resume else []:  # an unreadable one is moved aside and redone
        res.read_results(run_dir / m.name / "results.json")
    res.save_tokenizer(run_dir, plan.stream)
    stop = args.stop
    bar = _progress(plan.total_steps, args.quiet)
    finished = {}

    events = plan.config if plan.output["tensorboard"] else None

    def on_result(r):
        if not (run_dir / r.method / "results.json").exists():
            res.save_results(run_dir, r, events)
        finished[r.method] = r

    stop.check(f"before training; resume with: continual resume {run_dir}")
    try:
        stop.training = True
        runner.execute(
            plan,
            on_steps=bar.update if bar else None,
            on_result=on_result,
            run_dir=run_dir,
            resume=resume,
            should_stop=stop,
            on_task=_describe(bar, "{}: task {}"),
        )
    except Interrupted as e:
        return rundir.report_interrupted(e, stop, run_dir)
    finally:
        stop.training = False
        if bar is not None:
            bar.close()
        if finished:
            res.save_comparison(run_dir, finished)
    fault_point("results")
    stop.check(f"after training, every result written; figures: continual plot {run_dir}")
    print(res.format_table(finished))
    if hasattr(module, "report"):
        for line in module.report(finished, plan.stream):
            print(line)
    if not args.no_plots:
        fault_point("plots")
        stop.check(f"after training, every result written; figures: continual plot {run_dir}")
        _plots(module, plan.stream, finished, run_dir)
    print(f"run directory: {run_dir}")
    return 0


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", delay=2.0, leave=False, file=sys.stderr)


def _describe(bar, template: str):
    """A callback that shows what is running (`template` filled with its arguments) in front of
    the progress bar, or None without a bar."""
    if bar is None:
        return None
    return lambda *what: bar.set_description_str(template.format(*what))


def _sweep(args, config: dict | None = None) -> int:
    _enable_compilation_cache()
    from continual import devices

    distributed = getattr(args, "distributed", False)  # `continual resume` is one process
    joins = (getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id"))
    if not distributed and any(v is not None for v in joins):
        raise ValueError("--coordinator, --num-processes and --process-id need --distributed")
    if distributed:  # before anything touches a device
        devices.initialize(args.coordinator, args.num_processes, args.process_id)
        args.stop.install()  # JAX's preemption notifier took SIGTERM: ours again
    from continual import plots, runner
    from continual import results as res
    from continual import sweep as sw
    from continual.loop import Interrupted

    if config is None:
        _, config, spec = _experiment(args)
    else:  # a resumed sweep: its config as it was run
        from continual.config import experiment_name

        spec, args.experiment = args.experiment, experiment_name(args.experiment)
    grid = sw.parse_axes(config, args.grid, "--grid")
    outer = sw.parse_axes(config, args.outer, "--outer")
    groups = sw.plan_sweep(config, grid, args.seeds, outer, args.methods)
    tensorboard = runner.output_settings(config)["tensorboard"]
    if not distributed:  # (several processes agree on stopping at chunk boundaries only)
        args.stop.check(NOTHING_WRITTEN)
    request = {
        "experiment": spec,
        "kind": "sweep",
        "grid": args.grid,
        "outer": args.outer,
        "seeds": args.seeds,
        "methods": args.methods,
    }
    run_dir, resume = rundir.choose_shared(args, config, request, prefix="sweep-")
    primary = devices.is_primary()  # the one process that writes and prints
    if primary and groups[0].plan is not None:  # (streams drawn from the seed are not text)
        res.save_tokenizer(run_dir, groups[0].plan.stream)
    stop = args.stop
    bar = _progress(sw.total_steps(groups), args.quiet or not primary)
    results = []
    try:
        stop.training = True
        for i, group in enumerate(groups):
            paths = [
                run_dir / "members" / m.method / m.name / "results.json" for m in group.members
            ]
            done = [res.read_results(p) for p in paths] if resume and primary else [None]
            if devices.from_primary(all(r is not None for r in done)):
                if primary:  # only process 0 reads and writes files
                    results.append(done)
                if bar:
                    bar.update(sw.total_steps([group]))
                continue
            directory = run_dir / "checkpoints" / group.checkpoint_name
            if resume and not args.allow_config_change and primary:
                legacy = run_dir / "checkpoints" / str(i)  # earlier versions named it by index
                if legacy.is_dir() and not directory.exists():
                    try:  # the same config: program i is this group
                        legacy.rename(directory)
                    except OSError as e:  # (raising here would leave the others at the barrier)
                        print(f"warning: {e}; {group.method} starts afresh", file=sys.stderr)
            devices.barrier(f"checkpoints {i}")
            what = " ".join([group.method, *(f"{k}={v}" for k, v in group.outer.items())])
            what += f" ({len(group.members)} members, program {i + 1} of {len(groups)})"
            rs = sw.run_group(
                group,
                on_steps=bar.update if bar else None,
                directory=directory,
                resume=resume,
                should_stop=stop.everywhere,
                on_task=_describe(bar, what.replace("{", "{{").replace("}", "}}") + ": task {}"),
            )
            if primary:
                for member, r in zip(group.members, rs, strict=True):
                    events = sw.member_config(group, member) if tensorboard else None
                    res.save_results(run_dir / "members" / member.method, r, events)
            results.append(rs)
    except Interrupted as e:
        return rundir.report_interrupted(e, stop, run_dir)
    finally:
        stop.training = False
        if bar is not None:
            bar.close()
    if not primary:
        return 0
    metric = results[0][0].metric
    table = sw.summarize_sweep(groups, results)
    res.write_json(
        run_dir / "sweep.json", sw.sweep_json(groups, results, table, grid, outer, args.seeds)
    )
    stop.check(f"after training, every result written (sweep.json too): {run_dir}")
    print(sw.format_table(table, metric))
    if not args.no_plots:
        stop.check(f"after training, every result written (sweep.json too): {run_dir}")
        plots.plot_front(table, metric, run_dir / "plots" / "front.png")
        plots.plot_vs_value(table, metric, run_dir / "plots" / "average.png")
    print(f"sweep directory: {run_dir}")
    return 0


def _table(args) -> int:
    from continual import table

    if args.rows < 0:
        raise ValueError(f"--rows must be 0 or more, got {args.rows}")
    out = Path(args.out or ("summary.csv" if args.summary else "table.csv"))
    if out.suffix != ".csv":
        raise ValueError(f"--out must name a .csv file, got {str(out)!r}")
    found, keys = table.collect(args.dirs)
    rows = (table.summary_rows if args.summary else table.long_rows)(found, keys)
    print(table.format_rows(rows, None if args.summary else args.rows))
    paths = table.write(rows, out)
    print(f"{len(rows)} rows from {len(found)} methods and members: {', '.join(map(str, paths))}")
    return 0


def _list() -> int:
    from continual.config import experiment_names, load_experiment
    from continual.regularisers import registry
    from continual.streams import STREAMS

    names = experiment_names()
    width = max(map(len, names), default=0)
    for name in names:
        module = load_experiment(name)
        doc = (module.__doc__ or "").strip().splitlines()
        methods = ", ".join(module.get_config(None)["methods"])
        print(f"{name:<{width}}  {doc[0] if doc else ''}\n{'':<{width}}  methods: {methods}")
    print(f"regularisers: {', '.join(['naive', *registry.methods()])} (and `joint` as a method)")
    print(f"streams: {', '.join(STREAMS)}")
    return 0


def _plot(args) -> int:
    from continual import results as res
    from continual.config import load_experiment

    run_dir = Path(args.run_dirs[0])
    if len(args.run_dirs) > 1 or not _is_run(run_dir):
        return _plot_comparison(args)
    all_results = res.load_run(run_dir)
    module, stream = None, None
    config_file = run_dir / "config.json"
    experiment = run_dir.parent.name
    if (run_dir / "run.json").exists():  # a file experiment is named there by its path
        experiment = json.loads((run_dir / "run.json").read_text()).get("experiment", experiment)
    if config_file.exists():
        from continual import runner

        try:
            module = load_experiment(experiment)
            stream = runner.build_stream(json.loads(config_file.read_text()))
        except (ValueError, TypeError, AttributeError, KeyError):
            module = None  # the generic figures still come from results.json
    for path in _plots(module, stream, all_results, run_dir):
        print(path)
    return 0


def _is_run(path: Path) -> bool:
    """Whether `path` is one run's directory (not a sweep's, not a parent of runs), or a
    directory that does not exist (refused as a run, naming it)."""
    if not path.is_dir():
        return True
    try:
        info = json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        return not list(path.rglob("run.json"))  # (an unreadable run.json: load_run says why)
    return not (isinstance(info, dict) and info.get("kind") == "sweep")


def _plot_comparison(args) -> int:
    """Figures of every run and sweep under the directories, from the table of their members:
    the stability-plasticity front of every method and member, the average final metric
    against each swept value, and the (seed-mean) matrices side by side."""
    from continual import plots, table

    found, keys = table.collect(args.run_dirs)
    if not found:
        raise ValueError("no finished method or sweep member under " + ", ".join(args.run_dirs))
    metrics = sorted({m["results"].metric for m in found})
    if len(metrics) > 1:
        raise ValueError(
            f"these runs measure different metrics ({', '.join(metrics)}): plot them apart"
        )
    out, rows = Path(args.out), table.point_rows(found)
    paths = [plots.plot_front(rows, metrics[0], out / "front.png")]
    for key in keys:  # one figure per swept key, the points that swept it
        along = [
            r | {"values": {key: r["values"][key], **r["values"]}}  # the key runs along
            for r in rows
            if key in r["values"]
        ]
        name = "average_vs_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
        paths.append(plots.plot_vs_value(along, metrics[0], out / f"{name}.png"))
    paths.append(plots.plot_matrices(table.mean_matrices(found), out / "matrices.png"))
    for path in paths:
        if path is not None:
            print(path)
    return 0


def _generate(args) -> int:
    from continual.config import check_seed
    from continual.generate import format_steps, generate_text

    for name in ("max_new_tokens", "top_k", "show_top"):
        if getattr(args, name) < (1 if name == "max_new_tokens" else 0):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be {'positive' if name[0] == 'm' else '>= 0'}")
    if not 0 <= args.temperature < math.inf:
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    check_seed(args.seed, "--seed")
    if not args.prompt:
        raise ValueError("--prompt must not be empty")
    if (args.run_dir is None) == (args.model is None):
        raise ValueError("give a run directory or --model, not both")
    if args.raw and args.model is None:
        raise ValueError("--raw goes with --model (a run's prompt is always raw)")
    _enable_compilation_cache()
    if args.model is not None:
        from continual.reload import pretrained_language_model

        model, params, tokenizer = pretrained_language_model(args.model)
        prompt, facts, chat = args.prompt if args.raw else tokenizer.chat(args.prompt), [], True
    else:
        from continual.reload import load_language_model, prompt_for

        model, params, tokenizer = load_language_model(Path(args.run_dir), args.method)
        prompt, facts, chat = prompt_for(Path(args.run_dir), args.method, args.prompt)
    if args.show_top > tokenizer.vocab_size:
        raise ValueError(f"--show-top must be at most the vocabulary size {tokenizer.vocab_size}")
    done = generate_text(
        model,
        params,
        tokenizer,
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_n=args.show_top,
        seed=args.seed,
    )
    for fact in facts:  # what a retrieval method put before the question
        print(f"retrieved: {fact}")
    if args.show_top:
        print(format_steps(done.steps))
    chat = chat and not args.raw  # the answer is a turn of its own
    print(args.prompt + ("\n" if chat else "") + done.text)
    return 0


NOTHING_WRITTEN = "before anything was written"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `continual` console script."""
    args = _parser().parse_args(argv)
    # run, sweep and resume obey a signal at every moment from here on (rundir.StopFlag)
    args.stop = stop = rundir.StopFlag()
    show_warning, warnings.formatwarning = warnings.formatwarning, _one_line
    # orbax's advice ("Waiting for previous save ...", "Metadata file does not exist") is not the
    # user's to act on; its errors still show
    absl_level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    if args.command in ("run", "sweep", "resume"):
        stop.install()
        fault_point("start")
    from continual.train import DivergenceError  # (JAX: seconds)

    try:
        stop.check(NOTHING_WRITTEN)
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            return _list()
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "table":
            return _table(args)
        return _plot(args)
    except rundir.Stopped as e:
        print(f"continual: stopped ({signal.Signals(stop.signal).name}) {e}", file=sys.stderr)
        return stop.exit_code()
    except DivergenceError as e:
        return _fail(str(e), 1)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    finally:
        stop.uninstall()
        rundir.release()
        warnings.formatwarning = show_warning
        absl_logging.set_verbosity(absl_level)


def _one_line(message, category, filename, lineno, line=None) -> str:
    """A warning as the command prints it: one line, without Python's source location."""
    return f"warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
