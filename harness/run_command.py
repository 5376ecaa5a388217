"""`harness run`: one process, one of the processes torchrun started, or (`--nproc N`) the launcher of N of them."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path

import torch

from harness.cache import ArtifactCache, atomic_write_text, default_cache_root
from harness.errors import UserError
from harness.plugins import get_registry

log = logging.getLogger("harness")
#: More processes than this on a CPU need `--nproc-force`: they share its cores, so they rarely run faster.
CPU_PROCESSES = 2


def cmd_run(args) -> int:
    if args.nproc is not None:
        return launch(args.nproc, args.nproc_force, args.argv)
    from harness.checkpoint import CheckpointPolicy
    from harness.distributed import join, leave
    from harness.pipeline import run
    from harness.spec import validate_spec

    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be a positive number of CPU threads.")
    checkpoints = CheckpointPolicy(args.checkpoint_steps, args.checkpoint_minutes)
    resolved = validate_spec(args.spec, get_registry(), _overrides(args))
    run_dir = args.out or Path("runs") / f"{resolved.spec.name}-{resolved.spec_hash[:10]}"
    group, device = join(resolved.spec.device)
    handler: logging.Handler = logging.NullHandler()
    if group.main:  # only rank 0 writes the run directory
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    else:
        for console in logging.getLogger().handlers:
            console.setLevel(logging.ERROR)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        outcome = run(resolved, get_registry(), ArtifactCache(args.cache or default_cache_root(), group), run_dir,
                      show_progress=not args.no_progress and group.main, threads=args.threads,
                      checkpoints=checkpoints, group=group, device=device)
    finally:
        log.removeHandler(handler)
        handler.close()
        leave()
    errors = [r for r in outcome.results["rows"] if r.get("error")]
    if group.main:
        report(outcome.results, run_dir, resolved.spec.privacy.min_val_auc, len(outcome.executed),
               time.perf_counter() - started)
    return 2 if errors else 0


def report(results: dict, run_dir: Path, min_val_auc: float, computed: int, seconds: float) -> None:
    """The run's leaderboard.md, and what the user must know about it on the console."""
    from harness.leaderboard import render

    results = {**results, "_source": str(run_dir)}
    atomic_write_text(run_dir / "leaderboard.md", render([results], "md", base=run_dir))
    errors = [r for r in results["rows"] if r.get("error")]
    for row in errors:
        print(f"error: generator '{row['generator']}': {row['error']}", file=sys.stderr)
    reid = results.get("reid")
    if reid and not reid["reliable"]:
        print(f"warning: the re-ID model did not learn (validation AUC {reid['training'].get('val_auc')} < "
              f"{min_val_auc}); its privacy columns are marked unreliable. Train longer (reid.args) or check the "
              "data.", file=sys.stderr)
    skipped = results["dataset"]["skipped_videos"]
    if skipped:
        print(f"warning: {skipped} unreadable videos or videos without a valid EF were skipped (listed in "
              "results.json).", file=sys.stderr)
    print(f"Done in {seconds:.1f}s: {len(results['rows'])} rows ({len(errors)} failed), {computed} stages "
          f"computed; outputs in {run_dir}/ (results.json, leaderboard.md, manifest.json, run.log).")


def _overrides(args) -> dict | None:
    if not args.generator:
        if args.n_samples is not None or args.row_name is not None or args.generator_args != "{}":
            raise UserError("--generator-args, --n-samples and --row-name apply to --generator; name the generator "
                            "to run with --generator.")
        return None
    try:
        gen_args = json.loads(args.generator_args)
    except json.JSONDecodeError as exc:
        raise UserError(f"--generator-args is not valid JSON ({exc.msg}); "
                        "pass an object like '{\"k\": 1}'.") from None
    if not isinstance(gen_args, dict):
        raise UserError("--generator-args must be a JSON object like '{\"k\": 1}'.")
    entry = {"plugin": args.generator, "args": gen_args}
    if args.n_samples is not None:
        entry["n_samples"] = args.n_samples
    if args.row_name is not None:
        entry["name"] = args.row_name
    return {"generators": [entry]}


def launch(nproc: int, force: bool, argv: list[str]) -> int:
    """Run this same command as `nproc` processes through torch's elastic launcher (what `torchrun
    --standalone --nproc-per-node N -m harness ...` does); the exit code is 2 when a process stopped on a user
    error, 1 on any other failure."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nproc < 1:
        raise UserError("--nproc must be a positive number of processes.")
    if gpus and nproc > gpus:
        raise UserError(f"--nproc {nproc} asks for more processes than this machine's {gpus} GPUs; use at most "
                        f"--nproc {gpus}.")
    if not gpus and nproc > CPU_PROCESSES and not force:
        raise UserError(f"--nproc {nproc} on a CPU-only machine: processes share its cores and rarely run faster "
                        f"than {CPU_PROCESSES}; add --nproc-force to start them anyway.")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # each failure is told once, below
    try:
        elastic_launch(config, sys.executable)("-m", "harness", *_without_nproc(argv))
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        if codes == [2]:
            return 2  # the process printed its sentence
        print(f"error: {len(exc.failures)} of {nproc} processes failed (exit codes {codes}); their output is "
              "above.", file=sys.stderr)
        return 1
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith(("--nproc=", "--nproc-force")):
            out.append(arg)
    return out
