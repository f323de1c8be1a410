"""`mammofl <command> key=value ...`: plan, train, evaluate, table1, phantom-patches, demo.

Everything after the command is a hydra override, except the few command options named in
each command's help (e.g. `rows=`, `seeds=` for table1).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from common.atomic_io import check_writable_dir
from common.config.option_values import (
    flag,
    number,
    seed_number,
    seed_numbers,
    shell_value,
    whole_number,
)
from common.config.override_text import check_command_line
from common.errors import ConfigError, MammoflError
from common.runs.output_lock import output_lock
from common.runs.termination import EXIT_CODE, Terminated, saved_state, sigterm_raises

INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a job ended by Ctrl-C (SIGINT)

USAGE = """usage: mammofl <command> [key=value ...]

commands:
  plan      print the privacy plan (N, q, steps, sigma) of a config as JSON, without training
  train     train one cell: out_dir=DIR writes result.json, model.pt, predictions_*.csv
            (a folder holding a finished run is refused unless overwrite=true)
  evaluate  run_dir=DIR patches=PATH [format=patchset|released split=S name=N
            allow_patient_overlap=true]: score a saved model (a prepared set: its test rows;
            a test patient the model trained or selected on is refused)
  table1    rows=[real,real_eps6] seeds=[42,43,44] out_dir=DIR [grid=true|false]
            [lanes=auto|N]: run/resume the Table 1 grid (grid=true: compatible cached cells
            trained as one program; lanes: grids trained at once on CPU threads, auto: one per
            core); rows=paper: the paper's 18 rows, rows=cpu: the same with SynPre's CPU variant
  tune      space=NAME out_dir=DIR [seeds=[42,43]] <overrides>: the recipe search of
            configs/tune/NAME.yaml on the training data and its hold-out (no test set read);
            resumable; tune.csv ranks the candidates by hold-out AUROC
  prepare   source=cbis-ddsm|bcdr|manifest|released root=PATH out_dir=DIR [split=official|random
            abnormality=mass|calc|all columns.<name>=<col> ...]: patches + train/val/test split
  phantom   out_dir=DIR [sites=3 patients=30 test_patients=7 long_side=2000 seed=0 ambiguity=0
            conspicuity=1 split=both|train|test]: TCIA-like phantom sites (Training and Test
            CSVs, as TCIA ships CBIS-DDSM)
  phantom-patches out_dir=DIR [patients=48 test_patients=24 size=64 seed=0]
  federate  [experiment=federated/phantom] [fresh=true] [verbose=true] [prepare_only=true]
            <overrides>: the federated simulation (phantom sites, MCGANs, SynPre, DP rounds)
            and its comparison arms; prepare_only writes the sites' archives and stops
  loopback  [experiment=federated/phantom] [work_dir=runs/loopback] [fresh=true] <overrides>:
            the same federation deployed on this machine: certificates, a SuperLink with TLS and
            SuperNode authentication, one registered SuperNode per site, one run, all stopped
  submit    [connection=consortium] [timeout_s=S] experiment=federated/NAME out_dir=ABS
            [run_dir=ABS] <overrides>: a run on a deployed SuperLink (`flwr run`), overrides
            checked here first, its log streamed; exit 0 only when it finished:completed, 1
            failed or stopped, 124 still running after timeout_s (flwr run exits 0 once a run
            is submitted); out_dir and run_dir are paths on the SuperLink's machine
  certs     out_dir=DIR sites=[a,b] [hosts=[localhost,127.0.0.1] valid_days=365]: the
            consortium's CA, SuperLink TLS certificate and one SuperNode key pair per site
  demo      generate phantom patches and train the tiny single-node preset
  gan       train|generate|score|memorisation: the MCGAN (mammofl gan for its usage)
  bench     dp-finetune|gan|main-job|federated [options]: a benchmark, baseline and fast path
            side by side in one run, machine named; gpu-check OUT: all of them, short, on a GPU
  audit     <overrides> out_dir=DIR [seeds=[42,43,44] shadows=16 k=[50,100,200]
            confidence=0.95 canaries=real|mislabelled canary_count=M]: membership inference
            (LiRA, loss threshold) against the config's model trained on random halves, and a
            one-run empirical epsilon lower bound per seed (exit 3 if it exceeds the accounted
            one); compare=[DIR,...] out_dir=DIR tabulates and plots several audits

overrides are hydra's: experiment=table1/real_eps6 model=efficientnet_lite0 train.epochs=2 ...
"""


def script_main(name: str, entry: Callable[[list[str]], int | None]) -> None:
    """`python -m simulations.<name> key=value ...`: a mammofl error (a bad option, bad data)
    is one line on stderr and exit 2, as under `mammofl`, not a traceback."""
    try:
        code = entry(sys.argv[1:])
    except MammoflError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def split_options(args: Sequence[str], names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Take `name=value` command options out of the hydra overrides."""
    options, rest = {}, []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in names:
            options[key] = shell_value(value)
        else:
            rest.append(arg)
    return options, rest


def out_dir_and_integers(
    command: str, args: Sequence[str], names: Sequence[str]
) -> tuple[Path, dict[str, int]]:
    """`out_dir=DIR` (required) plus optional integer options, for the generator commands."""
    options, rest = split_options(args, ("out_dir", *names))
    if rest or "out_dir" not in options:
        raise ConfigError(f"usage: mammofl {command} out_dir=DIR [{'= '.join(names)}=]")
    numbers = {
        k: seed_number(k, v) if k == "seed" else whole_number(k, v, minimum=0)
        for k, v in options.items()
        if k != "out_dir"
    }
    return Path(options["out_dir"]), numbers


# the options that name a local folder a command writes into (`submit`'s out_dir is a path
# on the SuperLink's machine: not checked here; `prepare` checks its own, as a library call)
OUTPUT_FOLDER_KEYS = ("out_dir", "work_dir", "run_dir")
LOCAL_OUTPUT_COMMANDS = frozenset(
    {"train", "table1", "tune", "phantom", "phantom-patches", "federate"}
    | {"loopback", "certs", "audit", "gan", "demo"}
)


def check_output_folders(command: str, args: Sequence[str]) -> None:
    """OutputError before any work when a folder the command would write is not writable
    (a file, a read-only place): `train` found it only after training."""
    if command not in LOCAL_OUTPUT_COMMANDS:
        return
    for arg in args:
        key, sep, value = arg.lstrip("+").partition("=")
        value = shell_value(value.strip())  # as the run reads it: unquoted, ~ the home
        # an interpolation (${...}) or null is hydra's to resolve: not probed here
        if sep and key in OUTPUT_FOLDER_KEYS and value and "${" not in value and value != "null":
            check_writable_dir(Path(value), key)


def parse_list(value: str) -> list[str]:
    return [v.strip() for v in value.strip("[]").split(",") if v.strip()]


def cmd_plan(args: Sequence[str]) -> int:
    from common.config.compose import compose_config
    from common.runs.planning import plan_report

    print(json.dumps(plan_report(compose_config(args)), indent=2))
    return 0


def cmd_train(args: Sequence[str]) -> int:
    from common.config.compose import compose_config
    from common.runs.single_node import run_cell

    options, rest = split_options(args, ("overwrite",))
    overwrite = flag("overwrite", options.get("overwrite", "false"))
    config = compose_config(rest)
    if not config.out_dir:
        raise ConfigError("mammofl train needs out_dir=DIR")
    with output_lock("train", out_dir=Path(config.out_dir)):
        check_no_finished_run(Path(config.out_dir), overwrite)
        record = run_cell(config, Path(config.out_dir))
    summary = {
        name: {m: t[m]["value"] for m in ("auroc", "auprc_malignant", "auprc_benign")}
        for name, t in record["tests"].items()
    }
    print(
        json.dumps(
            {
                "out_dir": config.out_dir,
                "best_epoch": record["best_epoch"],
                "epsilon_spent": record["privacy"]["epsilon_spent"],
                "tests": summary,
            },
            indent=2,
        )
    )
    return 0


def check_no_finished_run(out_dir: Path, overwrite: bool) -> None:
    """A second `mammofl train` into a finished run's folder would replace its result, and
    under DP its epsilon would not be composed with the first's: refused unless asked for."""
    finished = out_dir / "result.json"
    if not finished.is_file() or overwrite:
        return
    try:
        spent = json.loads(finished.read_text()).get("privacy", {}).get("epsilon_spent")
    except (ValueError, AttributeError) as error:  # broken JSON, or JSON that is no record
        raise ConfigError(
            f"{finished} cannot be read ({error}); a run here would replace it: look at it, "
            "then pass another out_dir=, or overwrite=true to replace it"
        ) from error
    what = f"a DP run that spent epsilon {spent:.3f}" if spent else "a finished run"
    raise ConfigError(
        f"{out_dir} already holds {what} (result.json). A run here would replace it"
        + (", and its epsilon would not be composed with the first's" if spent else "")
        + ": pass another out_dir=, or overwrite=true to replace it"
    )


def cmd_evaluate(args: Sequence[str]) -> int:
    from simulations.evaluate import evaluate_run

    names = ("run_dir", "patches", "format", "split", "name", "out", "allow_patient_overlap")
    options, rest = split_options(args, names)
    if rest or "run_dir" not in options or "patches" not in options:
        raise ConfigError(
            "usage: mammofl evaluate run_dir=DIR patches=PATH [format= split= name= out=DIR "
            "allow_patient_overlap=true]"
        )
    allow = flag("allow_patient_overlap", options.pop("allow_patient_overlap", "false"))
    print(json.dumps(evaluate_run(**options, allow_patient_overlap=allow), indent=2))
    return 0


def cmd_table1(args: Sequence[str]) -> int:
    from simulations.table1 import DEFAULT_ROWS, DEFAULT_SEEDS, run_table1

    options, rest = split_options(args, ("rows", "seeds", "out_dir", "grid", "lanes"))
    if "out_dir" not in options:
        raise ConfigError("mammofl table1 needs out_dir=DIR")
    grid = flag("grid", options.get("grid", "true"))
    rows = parse_list(options["rows"]) if "rows" in options else list(DEFAULT_ROWS)
    if not rows:
        raise ConfigError("rows=[]: name at least one row, e.g. rows=[real,real_eps6]")
    seeds = seed_numbers("seeds", options["seeds"]) if "seeds" in options else list(DEFAULT_SEEDS)
    lanes = options.get("lanes", "auto")
    if lanes != "auto" and not (lanes.isdigit() and int(lanes) >= 1):
        raise ConfigError(f"lanes={lanes!r}: auto, or a whole number >= 1")
    with output_lock("table1", out_dir=Path(options["out_dir"])):
        paths = run_table1(
            Path(options["out_dir"]),
            rows,
            seeds,
            rest,
            grid=grid,
            lanes=None if lanes == "auto" else int(lanes),
        )
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def cmd_phantom_patches(args: Sequence[str]) -> int:
    from common.data.phantom_patches import write_phantom_patches

    out_dir, numbers = out_dir_and_integers(
        "phantom-patches", args, ("patients", "test_patients", "size", "seed")
    )
    sets = write_phantom_patches(out_dir, **numbers)
    print(json.dumps({k: s.counts() for k, s in sets.items()}, indent=2))
    return 0


def cmd_prepare(args: Sequence[str]) -> int:
    from simulations.prepare_cli import cmd_prepare as prepare

    return prepare(args)


def cmd_phantom(args: Sequence[str]) -> int:
    from common.data.phantom.sites import write_phantom_sites

    extra, rest = split_options(args, ("ambiguity", "conspicuity", "split"))
    out_dir, numbers = out_dir_and_integers(
        "phantom", rest, ("sites", "patients", "test_patients", "long_side", "seed")
    )
    shape = {k: number(k, extra[k]) for k in ("ambiguity", "conspicuity") if k in extra}
    rows = write_phantom_sites(
        out_dir,
        **numbers,
        ambiguity=shape.get("ambiguity", 0.0),
        conspicuity=shape.get("conspicuity", 1.0),
        split=extra.get("split", "both"),
    )
    print(json.dumps({"out_dir": str(out_dir), "lesion_views_per_site": rows}, indent=2))
    return 0


def cmd_demo(args: Sequence[str]) -> int:
    from common.data.phantom_patches import write_phantom_patches

    phantom = Path(os.environ.get("MAMMOFL_PHANTOM", "runs/phantom-patches"))
    if not (phantom / "test" / "manifest.csv").is_file():
        write_phantom_patches(phantom)
    os.environ["MAMMOFL_PHANTOM"] = str(phantom)
    return cmd_train(["experiment=tiny", "out_dir=runs/demo", *args])


def cmd_federate(args: Sequence[str]) -> int:
    from simulations.federate import run_federate

    options, rest = split_options(args, ("fresh", "verbose", "prepare_only"))
    flags = {k: flag(k, v) for k, v in options.items()}
    result = run_federate(
        rest,
        fresh=flags.get("fresh", False),
        verbose=flags.get("verbose", False),
        prepare_only=flags.get("prepare_only", False),
    )
    print(json.dumps(result, indent=2))
    return 0


def cmd_loopback(args: Sequence[str]) -> int:
    from simulations.loopback import run_loopback

    # SIGTERM raises Terminated (main): it leaves the federation's `with`, every process stops
    options, rest = split_options(args, ("work_dir", "fresh"))
    summary = run_loopback(
        rest,
        Path(options.get("work_dir", "runs/loopback")),
        fresh=flag("fresh", options.get("fresh", "false")),
    )
    print(json.dumps(summary, indent=2))
    if summary["processes_left"]:
        print("mammofl loopback: error: processes left running", file=sys.stderr)
        return 1
    if summary["status"] != "finished:completed":
        print(
            f"mammofl loopback: error: the run ended {summary['status']}: "
            f"{summary['details']} (logs: {summary['flower_log']}, {summary['process_logs']})",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_submit(args: Sequence[str]) -> int:
    from simulations.submit import cmd_submit as submit

    return submit(args)


def cmd_certs(args: Sequence[str]) -> int:
    from simulations.certs_cli import run_certs

    return run_certs(args)


def cmd_gan(args: Sequence[str]) -> int:
    from simulations.gan_cli import cmd_gan as run_gan

    return run_gan(args)


def cmd_tune(args: Sequence[str]) -> int:
    from simulations.tune import cmd_tune as tune

    return tune(args)


def cmd_audit(args: Sequence[str]) -> int:
    from simulations.audit_cli import cmd_audit as audit

    return audit(args)


BENCHMARKS = {
    "dp-finetune": "simulations.bench_dp_finetune",
    "gan": "simulations.bench_gan",
    "main-job": "simulations.bench_main_job",
    "federated": "simulations.bench_federated",
    "gpu-check": "simulations.gpu_check",
}


def cmd_bench(args: Sequence[str]) -> int:
    """`mammofl bench <name> [options]`: one benchmark (baseline and fast path side by side)."""
    import importlib

    if not args or args[0] not in BENCHMARKS:
        raise ConfigError(
            f"usage: mammofl bench {'|'.join(BENCHMARKS)} [options] (each module's docstring "
            "lists its options)"
        )
    result = importlib.import_module(BENCHMARKS[args[0]]).main(list(args[1:]))
    return int(result or 0)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "bench": cmd_bench,
    "plan": cmd_plan,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "table1": cmd_table1,
    "phantom-patches": cmd_phantom_patches,
    "demo": cmd_demo,
    "prepare": cmd_prepare,
    "phantom": cmd_phantom,
    "gan": cmd_gan,
    "federate": cmd_federate,
    "loopback": cmd_loopback,
    "submit": cmd_submit,
    "certs": cmd_certs,
    "audit": cmd_audit,
    "tune": cmd_tune,
}


def command_usage(command: str) -> str:
    """One command's lines of USAGE (its entry and the indented lines that continue it)."""
    lines = USAGE.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {command} "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 12):
            break
        block.append(line)
    return (
        f"usage: mammofl {command} [key=value ...]\n\n"
        + "\n".join(block)
        + OVERRIDES_HINT.get(command, "")
    )


# what other key=value arguments are, per command: hydra overrides of the run config, of the
# federated config, of the GAN config, or nothing (the command takes only its own options)
_RUN_HINT = "\n\nother key=value arguments are hydra overrides, e.g. experiment=table1/real_eps6"
_FEDERATED_HINT = (
    "\n\nother key=value arguments are hydra overrides of the federated config, e.g. "
    "experiment=federated/tiny privacy.target_epsilon=3"
)
OVERRIDES_HINT = {
    **dict.fromkeys(("plan", "train", "table1", "tune", "audit", "demo"), _RUN_HINT),
    **dict.fromkeys(("federate", "loopback", "submit"), _FEDERATED_HINT),
    "gan": "\n\n`gan train`: other key=value arguments are hydra overrides of the GAN config, "
    "e.g. gan_preset=dp train.epochs=50",
}


FEDERATION_STATE = (
    "{run_dir} (server/checkpoint.pt, sites/*/state; resume with federation.resume=true)"
)
# where each long job keeps the state a rerun resumes from (`gan train` notes its own)
STATE_HINTS = {
    "table1": "{out_dir}/cells (finished cells; a rerun skips them)",
    "federate": FEDERATION_STATE,
    "loopback": FEDERATION_STATE,
    "prepare": "{out_dir}/images (the patches cut so far; a rerun into the same out_dir keeps "
    "them and cuts the rest)",
}


def _holds_a_federation(run_dir: str) -> bool:
    from simulations.federate import holds_a_federation  # torch, flwr: only when stopped

    return holds_a_federation(Path(run_dir))


def stopped_message(command: str, args: Sequence[str], how: str = "stopped by SIGTERM") -> str:
    """The closing line of a job stopped by SIGTERM (or Ctrl-C, `how`): where its state is,
    or that none was."""
    saved = saved_state()
    if not saved and command in STATE_HINTS:
        options, _ = split_options(args, ("out_dir", "run_dir", "work_dir"))
        out_dir = options.get("out_dir", "runs/federated" if command == "federate" else "")
        run_dir = options.get("run_dir", out_dir)
        if command == "loopback":  # its data and run go under work_dir
            run_dir = options.get("run_dir", f"{options.get('work_dir', 'runs/loopback')}/run")
        if command != "loopback" or _holds_a_federation(run_dir):
            saved = [STATE_HINTS[command].format(out_dir=out_dir, run_dir=run_dir)]
    if not saved:
        return f"{how}; no partial result was written (a rerun starts again)"
    return f"{how}; state saved in {', '.join(saved)}"


def quiet_flower() -> None:
    """On SIGTERM a simulation's workers see their Ray actors stop: Flower would log that
    intended stop as errors with tracebacks (a filter: run_flower restores the level)."""
    logging.getLogger("flwr").addFilter(lambda record: False)


def exit_despite_lingering_threads(grace_s: float = 10.0, code: int = EXIT_CODE) -> None:
    """After SIGTERM or Ctrl-C, a non-daemon thread the job left behind (Flower's ServerApp
    thread in a simulation, waiting for replies) would keep the process alive: give such
    threads a grace period, then end the process with `code`. Files are safe: every write is
    atomic."""
    deadline = time.monotonic() + grace_s

    def lingering() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()
        ]

    for thread in lingering():
        thread.join(max(0.0, deadline - time.monotonic()))
    if lingering():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's SuperLink state store
    # expected with a frozen backbone (inputs of the head need no gradient) and without secure RNG
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help", "help")
        print(USAGE, file=sys.stdout if asked else sys.stderr)
        if argv and not asked:
            near = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            print(f"mammofl: error: unknown command {argv[0]!r}{hint}", file=sys.stderr)
        return 0 if asked else 2  # no command: usage
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        print(command_usage(argv[0]))
        return 0
    # Ray's C++ failure handler would turn SIGTERM into an abort (exit 134) in a simulation
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        check_command_line(argv[1:])
        check_output_folders(argv[0], argv[1:])
        with sigterm_raises(on_terminate=quiet_flower):
            return COMMANDS[argv[0]](argv[1:])
    except MammoflError as error:
        print(f"mammofl {argv[0]}: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"mammofl {argv[0]}: {stopped_message(argv[0], argv[1:])}", file=sys.stderr)
        exit_despite_lingering_threads()
        return EXIT_CODE
    except KeyboardInterrupt:  # sigterm_raises quieted Flower first
        closing = stopped_message(argv[0], argv[1:], "interrupted")
        print(f"mammofl {argv[0]}: {closing}", file=sys.stderr)
        exit_despite_lingering_threads(code=INTERRUPTED_EXIT_CODE)
        return INTERRUPTED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
