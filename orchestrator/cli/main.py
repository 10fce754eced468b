"""`hsjp-study`: run, plan, inspect and report the HSJP paper's studies (docs/design.md).

    hsjp-study run [STUDY]      schedule every stage on Ray (default: the embedded smoke study)
    hsjp-study run STUDY --simulate --gpus G     the same scheduler on fake GPUs, stages as timed holds
    hsjp-study plan STUDY [--gpus G]             dry run: trials, shared stages, GPU-hours, wall-clock
    hsjp-study status STUDY     done / running / waiting / failed per stage, ETA
    hsjp-study report           Tables 1-3, Figures 3-6 from the store
    hsjp-study make-data | puzzle | evaluate     tools: synthetic data, a puzzle figure, COCO evaluation

A `workloads.user_errors.UserError` (bad study, data, store path, file or checkpoint) prints `error: <message>`
and exits 2 before anything is written (`--verbose`: with its traceback); any other exception is a bug:
its traceback, a line asking to report it, exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.cli.evaluate import add_arguments as add_checkpoint_arguments
from orchestrator.cli.evaluate import run_from_args
from orchestrator.cli.status import render_status, status_totals, study_status, watch
from orchestrator.plan import Plan, make_plan, render_plan
from orchestrator.schedule.lineage import (
    archive_stale,
    find_stale,
    pre_identity_line,
    pre_identity_results,
    stale_summary,
)
from orchestrator.schedule.scheduler import render_prediction
from orchestrator.spec.inputs import check_inputs, data_config, missing_inputs, prepare_data
from orchestrator.spec.study import Study, load_study
from orchestrator.spec.tracking import check_available as check_trackers
from orchestrator.store.format import FINISHED_STATES, StoreError
from workloads.config import ConfigError
from workloads.user_errors import MissingFileError, UserError

if TYPE_CHECKING:
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STUDY = REPO / "studies" / "smoke.yaml"
BUG_NOTE = (
    "hsjp-study: the error above is a bug in hsjp-study, not in your study or data; please report it "
    "with this traceback and the command you ran"
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:  # something the user can fix: one line, exit 2 (the traceback with -v)
        if verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # anything else is a bug: its traceback, and where to send it
        traceback.print_exc()
        print(BUG_NOTE, file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log progress and show tracebacks",
    )
    parser = argparse.ArgumentParser(
        prog="hsjp-study",
        parents=[common],
        description="Run the HSJP paper's experiments (pretext pretraining + COCO "
        "keypoint finetuning) as Ray studies and report them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "run every trial of a study on Ray (idempotent: resumes, never recomputes)")
    p.add_argument("study", nargs="?", help=f"study file (default: the smoke study, {DEFAULT_STUDY.name})")
    _storage_arg(p)
    p.add_argument(
        "--address",
        help="Ray cluster address ('auto' for a running cluster; default: $RAY_ADDRESS, as set inside "
        "a `ray job submit` job, else start a local Ray)",
    )
    p.add_argument(
        "--max-concurrent",
        type=_positive_int,
        metavar="K",
        help="stages running at once (default: compute.max_concurrent_trials, else as many as the "
        "cluster's free resources hold)",
    )
    p.add_argument(
        "--simulate",
        action="store_true",
        help="dry run of the scheduler: each stage holds its real resource request on a local Ray with "
        "--gpus fake GPUs for its estimated hours × --time-scale seconds (needs no data, writes no store)",
    )
    p.add_argument(
        "--recompute-stale",
        action="store_true",
        help="recompute the stages in the store that an older workload version made (their folders are "
        "moved under stale/ in the store first; default: keep and reuse them, saying so)",
    )
    p.add_argument("--gpus", type=int, metavar="G", help="--simulate: GPUs of the simulated cluster")
    p.add_argument(
        "--cpus",
        type=float,
        metavar="C",
        help="--simulate: CPUs of the simulated cluster (default: enough that the GPUs bind)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        metavar="S",
        help="--simulate: seconds per estimated hour (default: the lower bound lasts 120 s)",
    )

    p = add("plan", cmd_plan, "dry run: the trial matrix, shared stages and the GPU-hour estimate")
    p.add_argument("study", nargs="?", help="study file (default: the smoke study)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (what plan.json holds)")
    p.add_argument(
        "--gpus", type=_positive_int, metavar="G", help="also print the predicted wall-clock time on G GPUs"
    )
    _storage_arg(p)

    p = add("status", cmd_status, "per stage: done / running / waiting / failed / collapsed, metric, ETA")
    p.add_argument("study", nargs="?", help="study file (default: the smoke study)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument(
        "--watch",
        nargs="?",
        const=5.0,
        type=_positive_float,
        metavar="SECONDS",
        help="refresh the table every SECONDS (default 5) until the study is complete; Ctrl-C stops",
    )
    p.add_argument("--address", help="Ray cluster whose dashboard URL to show (default: $RAY_ADDRESS)")
    _storage_arg(p)

    p = add("report", cmd_report, "Tables 1-3 and Figures 3-6 (beside the paper's numbers) from the store")
    _storage_arg(p)
    p.add_argument("--out", help="output folder (default: <storage>/report)")

    p = add("make-data", cmd_make_data, "write the synthetic COCO-format data set")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=_positive_int, default=48, help="training images (default 48)")
    p.add_argument("--val", type=_positive_int, default=12, help="validation images (default 12)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")

    p = add("puzzle", cmd_puzzle, "draw one HSJP puzzle of an image (the pretext task, paper Fig. 1)")
    p.add_argument("image", help="an image file")
    p.add_argument(
        "--n", type=_positive_int, default=6, help="N: the crop is split into N×N patches (default 6)"
    )
    p.add_argument("--out", default="puzzle.png", help="output PNG (default puzzle.png)")
    p.add_argument("--seed", type=int, default=0, help="shuffle / augmentation seed")
    p.add_argument("--input-size", type=_positive_int, default=224, help="crop side in px (default 224)")

    p = add(
        "evaluate",
        cmd_evaluate,
        "COCO keypoint AP, AP per OKS threshold and error analysis of a results file (--gt, --results), "
        "or of a pose checkpoint run through our inference (--checkpoint: the setup check)",
    )
    p.add_argument("--gt", help="ground-truth annotation JSON (person_keypoints_val2017.json)")
    p.add_argument("--results", help="COCO keypoint results JSON")
    p.add_argument("--out", help="folder for metrics.json (and, with --checkpoint, the results file)")
    add_checkpoint_arguments(p)
    return parser


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        default=os.environ.get("HSJP_STORAGE", "./hsjp-store"),
        metavar="DIR|URI",
        help="result store: a folder, shared filesystem or s3:// / gs:// URI "
        "(default: $HSJP_STORAGE or ./hsjp-store)",
    )


def ray_address(given: str | None) -> str | None:
    """--address, else $RAY_ADDRESS: Ray sets it for a `ray job submit` entrypoint, which must join that
    cluster (the local Ray started without an address is `address="local"`, which ignores RAY_ADDRESS)."""
    return given or os.environ.get("RAY_ADDRESS") or None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive integer")
    return value


# ------------------------------------------------------------------------------------------ commands
def cmd_run(args: argparse.Namespace) -> int:
    if getattr(args, "recompute_stale", False) and args.simulate:
        raise ConfigError("--recompute-stale is an option of a real run (--simulate writes no store)")
    if args.simulate:
        return cmd_simulate(args)  # a dry run: no store is opened
    for flag in ("gpus", "cpus", "time_scale"):
        if getattr(args, flag) is not None:
            raise ConfigError(
                f"--{flag.replace('_', '-')} is an option of --simulate (a dry run); a real run "
                "takes its resources from the Ray cluster"
            )
    # imported here, not at the top: pyarrow (the store) and Ray stay out of the other commands' start-up
    from orchestrator.cli.run import run_study
    from orchestrator.ray.connect import check_ray
    from orchestrator.store.store import Store, check_storage

    check_storage(args.storage)  # a file, an unknown scheme, an unwritable place: refused first
    study = _load(args.study)
    check_inputs(study)  # everything checkable is checked before the store is touched
    check_trackers(study.tracking, f"{study.path}: tracking")  # a missing mlflow / wandb: exit 2 now
    check_ray()  # Ray too old, or Train V1 selected (RAY_TRAIN_V2_ENABLED=0): refused before Ray starts
    store = Store(args.storage)
    plan = make_plan(study, prepare_data(study, store))
    _say_stale(plan, store, recompute=getattr(args, "recompute_stale", False))
    max_concurrent = args.max_concurrent or study.compute.max_concurrent_trials
    summary = run_study(
        plan, store, study_text=study.text, address=ray_address(args.address), max_concurrent=max_concurrent
    )
    failed = _failed(summary, plan, store)
    print(
        f"results: {store.uri_of('studies', plan.study)} (plan.json, trials.csv); stages under {store.uri_of('stages')}"
    )
    print(
        f"next: hsjp-study status {study.path} --storage {store.uri} [--watch]   |   hsjp-study report --storage {store.uri}"
    )
    if failed:
        print(f"{len(failed)} stage(s) did not finish: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _say_stale(plan: Plan, store: Store, recompute: bool) -> None:
    """Before a run: name the stored stages an older workload version made, and keep them or (with
    --recompute-stale) move them aside so they are computed again; note the results of the earlier id
    recipe, which no stage of this plan finds."""
    stale = find_stale(plan, store)
    if stale:
        print(stale_summary(stale, recompute=recompute), flush=True)
        if recompute:
            archive_stale(store, sorted(stale))
    _say_pre_identity(store)


def _say_pre_identity(store: Store) -> None:
    older = pre_identity_results(store)
    if older:
        print(pre_identity_line(older), flush=True)


def _failed(summary: dict[str, Any], plan: Plan, store: Store) -> list[str]:
    """Stages without a result after the run (the store is the source of truth)."""
    rows = study_status(plan, store)
    bad = [r["stage_id"] for r in rows if r["state"] not in FINISHED_STATES]
    if summary.get("failures") and not bad:
        bad = [f.get("stage_id") or f.get("trial_id") for f in summary["failures"]]
    return bad


def cmd_simulate(args: argparse.Namespace) -> int:
    from orchestrator.cli.run import Simulation, check_simulation, simulate_study  # Ray: only to simulate

    if args.gpus is None:
        raise ConfigError("--simulate needs --gpus G: the GPUs of the simulated cluster")
    _, plan = _dry_plan(args)
    sim = Simulation(gpus=args.gpus, cpus=args.cpus, time_scale=args.time_scale)
    check_simulation(plan, sim)  # bad input exits 2 before Ray starts
    print(
        f"simulating study {plan.study} on {sim.gpus} fake GPUs, {sim.cpus_for(plan):g} CPUs ...", flush=True
    )
    out = simulate_study(plan, sim, progress=bool(getattr(args, "verbose", False)))
    print(f"{out['stages']} stages, time scale {out['time_scale']:.4g} s per estimated hour")
    print(out["line"])
    if out["failed"]:
        print(f"{len(out['failed'])} simulated stage(s) failed: {', '.join(out['failed'])}", file=sys.stderr)
        return 1
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    study, plan = _dry_plan(args)
    if args.json:
        out = plan.to_dict()
        if args.gpus:
            from orchestrator.schedule.scheduler import list_schedule, lower_bound

            schedule = list_schedule(plan, {"GPU": float(args.gpus), "CPU": float("inf")})
            out["prediction"] = {
                "gpus": args.gpus,
                "wall_clock_hours": max((x.end_h for x in schedule), default=0.0),
                "lower_bound_hours": lower_bound(plan, args.gpus),
            }
        print(json.dumps(out, indent=2, sort_keys=False, default=str))
    else:
        print(render_plan(plan))
        if args.gpus:
            print(render_prediction(plan, args.gpus))
    # notes on stderr, so that --json stays JSON: inputs a real run needs that are not here, and the
    # plan's stages that the store (when there is one: plan creates none) holds from an older workload
    missing = missing_inputs(study)
    if missing:
        print("note: a real run needs inputs that are not here:\n  " + "\n  ".join(missing), file=sys.stderr)
    if _store_is_there(args.storage):
        stale = find_stale(plan, _existing_store(args.storage))
        if stale:
            print(f"note: {stale_summary(stale)}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    study = _load(args.study)
    store = _existing_store(args.storage)
    plan = make_plan(study, data_config(study.data, store.base))
    if args.watch is not None:
        if args.json:
            raise ConfigError("status: --watch and --json do not go together (use --json in a loop instead)")
        from orchestrator.ray.connect import dashboard_url  # Ray: only when asked

        url = dashboard_url(ray_address(getattr(args, "address", None)))
        head = f"Ray dashboard: {url}\n" if url else ""

        def render() -> tuple[str, bool]:
            rows = study_status(plan, store)
            return head + render_status(rows, plan), status_totals(rows, plan)["complete"]

        watch(render, interval_s=args.watch)
        return 0
    from orchestrator.store.disk import store_usage  # pyarrow: see cmd_run

    rows = study_status(plan, store)
    usage = store_usage(store)
    if args.json:
        out = {
            "summary": status_totals(rows, plan),
            "stages": rows,
            "store": {"uri": store.uri, **usage.to_dict()},
        }
        print(json.dumps(out, indent=2, default=str))
    else:
        print(render_status(rows, plan))
        print(usage.line(store.uri))
        _say_pre_identity(store)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _existing_store(args.storage)
    out = args.out or (os.path.join(args.storage, "report") if "://" not in args.storage else "hsjp-report")
    from reports.build import make_report

    files = make_report(args.storage, out, progress=True)
    index = next((f for f in reversed(files) if str(f).endswith(".html")), Path(out))
    print(f"report: {len(files)} files in {out}; open {index}")
    return 0


def cmd_make_data(args: argparse.Namespace) -> int:
    from workloads.data.synthetic import generate

    try:
        summary = generate(args.out, n_train=args.train, n_val=args.val, seed=args.seed)
    except OSError as exc:  # only files under --out are written here: a full disk, no permission
        raise UserError(f"make-data --out {args.out}: cannot write the data set ({exc})") from exc
    print(json.dumps(summary, indent=2))
    return 0


def cmd_puzzle(args: argparse.Namespace) -> int:
    if not Path(args.image).is_file():
        raise MissingFileError(f"puzzle: image {args.image} not found")
    from workloads.hsjp.figure import write_puzzle_figure

    path = write_puzzle_figure(args.image, args.n, args.out, seed=args.seed, input_size=args.input_size)
    print(f"puzzle N={args.n}: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        return run_from_args(args)
    if not args.gt or not args.results:
        raise ConfigError("evaluate: give --gt and --results (a results file), or --checkpoint (a model)")
    from workloads.pose.evaluate import evaluate_file, format_table

    metrics = evaluate_file(args.gt, args.results, out_dir=args.out)
    print(format_table(metrics))
    if args.out:
        print(f"\nmetrics: {Path(args.out) / 'metrics.json'}")
    return 0


# ------------------------------------------------------------------------------------------ helpers
def _load(path: str | None, dry_run: bool = False) -> Study:
    if path is None:
        if not DEFAULT_STUDY.is_file():
            raise ConfigError(
                f"the embedded smoke study {DEFAULT_STUDY} is missing (installed without the "
                "repository's studies/?); give a study file: hsjp-study run STUDY.yaml"
            )
        path = str(DEFAULT_STUDY)
    return load_study(path, dry_run=dry_run)


def _dry_plan(args: argparse.Namespace) -> tuple[Study, Plan]:
    """The study and its plan for a dry run (plan, --simulate): neither the data nor the checkpoints are
    read, and the store root is named as Store would name it without creating it."""
    study = _load(args.study, dry_run=True)
    storage: str = args.storage
    base = storage.rstrip("/") if "://" in storage else os.path.abspath(os.path.expanduser(storage))
    return study, make_plan(study, data_config(study.data, base))


def _store_is_there(storage: str) -> bool:
    return "://" in storage or Path(storage).expanduser().is_dir()


def _existing_store(storage: str) -> Store:
    """Open a store that must exist already (status / report never create one)."""
    from orchestrator.store.store import Store  # pyarrow: see cmd_run

    if not _store_is_there(storage):
        raise StoreError(f"no store at {storage}: nothing has run there (give --storage or set HSJP_STORAGE)")
    return Store(storage, create=False)


if __name__ == "__main__":
    sys.exit(main())
