"""The `harness` command line. User errors end as one sentence on stderr and exit code 2."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from harness.cache import ArtifactCache, atomic_write_text, default_cache_root
from harness.components import ROLES
from harness.errors import UserError
from harness.plugins import Registry, get_registry
from harness.run_command import CPU_PROCESSES, cmd_run

log = logging.getLogger("harness")


def _parser(registry: Registry) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description=__doc__)
    p.add_argument("--cache", type=Path, default=None, help="artifact cache folder (default $HARNESS_CACHE or "
                                                            ".harness-cache)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a benchmark spec")
    run.add_argument("spec", type=Path)
    run.add_argument("--generator", help="run only this registered generator (its row joins the spec's benchmark)")
    run.add_argument("--generator-args", default="{}", help="JSON object of args for --generator")
    run.add_argument("--n-samples", type=int, default=None, help="samples for --generator")
    run.add_argument("--row-name", default=None, help="the row's name for --generator (default: the plugin's), "
                     "to compare settings of one generator in one table")
    run.add_argument("--out", type=Path, default=None, help="run directory (default runs/<name>-<spec hash>)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch and numba (default "
                                                                "$HARNESS_THREADS, else torch's default)")
    run.add_argument("--checkpoint-steps", type=int, default=None,
                     help="training loops save their state every N steps (and every --checkpoint-minutes); a killed "
                          "run resumes from the last save")
    run.add_argument("--checkpoint-minutes", type=float, default=10.0,
                     help="training loops save their state this often (default 10)")
    run.add_argument("--nproc", type=int, default=None,
                     help="run as N processes (torchrun; one per GPU): training with DDP, sampling and features "
                          "sharded")
    run.add_argument("--nproc-force", action="store_true", help=f"allow --nproc above {CPU_PROCESSES} on a CPU")

    plan = sub.add_parser("plan", help="what each stage of a spec will cost on this device, before running it")
    plan.add_argument("spec", type=Path)
    plan.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    plan.add_argument("--nproc", type=int, default=1, help="plan a run over N processes (one per GPU)")
    plan.add_argument("--runs", type=Path, default=Path("runs"), help="where earlier runs of the spec are")
    plan.add_argument("--against", type=Path, metavar="RUN_DIR",
                      help="show each estimate beside what this run of the spec measured")

    val = sub.add_parser("validate", help="check a spec and print its hashes")
    val.add_argument("spec", type=Path)

    plug = sub.add_parser("plugins", help="list installed plugins and what they register")
    plug.add_argument("--json", action="store_true")

    board = sub.add_parser("leaderboard", help="render the table of one benchmark's runs")
    board.add_argument("runs", type=Path, nargs="+")
    board.add_argument("--format", choices=["md", "csv", "json", "html"], default="md",
                       help="html: one static page that opens from disk (inline style, script and figures)")
    board.add_argument("--out", type=Path, default=None, help="folder to write leaderboard.<format> into")
    board.add_argument("--allow-mixed", action="store_true", help="show runs of different benchmarks together")
    board.add_argument("--allow-unchecked", action="store_true",
                       help="show runs that fail `harness check` (their problems are printed as warnings)")

    check = sub.add_parser("check", help="check a run directory made elsewhere before it joins a table")
    check.add_argument("run", type=Path, help="the run directory (results.json, manifest.json, samples/)")
    check.add_argument("--spec", type=Path, default=None,
                       help="the benchmark spec it must belong to (default: the spec its own manifest records)")

    comp = sub.add_parser("compare", help="check, row by row, whether a run's numbers lie inside a published table's "
                                          "intervals")
    comp.add_argument("reference", type=Path, help="a run directory or a published leaderboard.json")
    comp.add_argument("run", type=Path, help="the run directory to check")

    cache = sub.add_parser("cache", help="inspect or clean the artifact cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("ls", help="list cached artifacts")
    gc = cache_sub.add_parser("gc", help="remove leftovers of killed runs and artifacts no run uses")
    gc.add_argument("--runs", type=Path, default=Path("runs"), help="artifacts used by runs under here are kept")
    gc.add_argument("--leftovers-only", action="store_true", help="only remove partial writes of killed runs")
    gc.add_argument("--dry-run", action="store_true")

    export = sub.add_parser("export", help="write a row's privacy-compliant samples as an EchoNet-format dataset")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--row", required=True, help="the row (generator name) to export")
    export.add_argument("--out", type=Path, required=True, help="the dataset folder to create")
    export.add_argument("--include-memorised", action="store_true",
                        help="also export the samples above τ, marked in FileList.csv's Memorised column")
    export.add_argument("--ef", choices=["requested", "measured"], default="requested",
                        help="FileList's EF: the requested one, or the real-trained regressor's measurement")
    export.add_argument("--split", default="1,0,0", help="TRAIN,VAL,TEST shares, assigned by hashed sample id")
    export.add_argument("--no-progress", action="store_true")

    regen = sub.add_parser("regenerate", help="redraw one sample from its provenance and compare it bit for bit")
    regen.add_argument("run_dir", type=Path)
    regen.add_argument("sample_id")
    regen.add_argument("--row", help="the row (generator name) when several rows have this sample id")

    bench = sub.add_parser("bench", help="measure throughput figures on this machine")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    pairs = bench_sub.add_parser("pairs", help="all-pairs pred-head scoring vs a per-query loop")
    pairs.add_argument("--queries", type=int, default=20_000)
    pairs.add_argument("--references", type=int, default=7_465)
    pairs.add_argument("--dim", type=int, default=128)
    pairs.add_argument("--loop-queries", type=int, default=300, help="queries the slow loop is timed on")
    pairs.add_argument("--memory-queries", type=int, default=100_000, help="queries of the peak-memory run")
    pairs.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pairs.add_argument("--json", action="store_true")
    content = bench_sub.add_parser("content", help="frame-level content memorisation scoring (default: EchoNet size)")
    content.add_argument("--samples", type=int, default=10_000)
    content.add_argument("--references", type=int, default=7_465)
    content.add_argument("--frames", type=int, default=64)
    content.add_argument("--stride", type=int, default=4, help="compare every k-th frame (privacy.content)")
    content.add_argument("--dim", type=int, default=128)
    content.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    content.add_argument("--json", action="store_true")
    metrics = bench_sub.add_parser("metrics", help="the registered row metrics (the peers' privacy tests, ...) on "
                                                   "random features (default: EchoNet size, 100,000 samples)")
    metrics.add_argument("--metric", action="append", help="a registered metric (repeat; default: all of them)")
    metrics.add_argument("--samples", type=int, default=100_000)
    metrics.add_argument("--references", type=int, default=7_465, help="training features")
    metrics.add_argument("--test", type=int, default=1_277, help="held-out features")
    metrics.add_argument("--dim", type=int, default=128)
    metrics.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the intervals")
    metrics.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    metrics.add_argument("--json", action="store_true")

    _plugin_commands(sub, registry)
    return p


def _plugin_commands(sub, registry: Registry) -> None:
    """Subcommands plugins register: `"data phantom"` becomes `harness data phantom`."""
    groups: dict[str, Any] = {}
    for words, registered in sorted(registry.components["commands"].items()):
        *group, name = words.split()
        if (group[0] if group else name) in COMMANDS:
            log.warning("plugin %s registers the command '%s', which is built in; it is ignored", registered.plugin,
                        words)
            continue
        try:
            command = registered.factory()
            parent = sub
            if group:
                if group[0] not in groups:
                    groups[group[0]] = sub.add_parser(group[0], help=f"{group[0]} commands from plugins"
                                                      ).add_subparsers(dest=f"{group[0]}_command", required=True)
                parent = groups[group[0]]
            parser = parent.add_parser(name, help=command.help)
            command.add_arguments(parser)
        except Exception as exc:  # a plugin's broken command must not take the other commands down
            log.warning("plugin %s: command '%s' is unusable (%s: %s)", registered.plugin, words,
                        type(exc).__name__, exc)
            continue
        parser.set_defaults(plugin_command=command)


def _cache(args) -> ArtifactCache:
    return ArtifactCache(args.cache or default_cache_root())


def cmd_plan(args) -> int:
    from harness.plan import check_device, make_plan
    from harness.spec import validate_spec

    if args.nproc < 1:
        raise UserError("--nproc must be a positive number of processes.")
    resolved = validate_spec(args.spec, get_registry())
    print(make_plan(resolved, get_registry(), check_device(args.device), args.nproc, args.runs, _cache(args).root,
                    args.against))
    return 0


def cmd_validate(args) -> int:
    from harness.spec import validate_spec

    resolved = validate_spec(args.spec, get_registry())
    spec = resolved.spec
    print(f"{args.spec}: valid spec '{spec.name}' (spec_version {spec.spec_version}, seed {spec.seed})")
    print(f"  dataset   {spec.dataset.plugin}")
    print(f"  encoder   {spec.encoder.plugin}")
    if spec.reid:
        print(f"  reid      {spec.reid.plugin}")
    for entry in spec.generators:
        print(f"  generator {entry.row_name} ({entry.plugin}, {resolved.n_samples(entry)} samples)")
    for variant in spec.reid_study.variants if spec.reid_study else []:
        parts = (spec.variant_ref(variant, p).plugin for p in ("dataset", "encoder", "reid"))
        print(f"  re-ID variant {variant.name} ({' / '.join(parts)})")
    print(f"  spec hash      {resolved.spec_hash}")
    print(f"  benchmark hash {resolved.benchmark_hash}")
    return 0


def cmd_export(args) -> int:
    from harness.export import ExportOptions, export_row

    try:
        shares = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
        raise UserError(f"--split {args.split}: give three non-negative TRAIN,VAL,TEST shares summing to 1, e.g. "
                        "0.8,0.1,0.1.")
    started = time.perf_counter()
    options = ExportOptions(args.include_memorised, args.ef, shares)
    report = export_row(args.run_dir, args.row, args.out, get_registry(), _cache(args), options,
                        progress=not args.no_progress)
    seconds = time.perf_counter() - started
    print(f"exported {report['kept']} samples of row '{args.row}' ({report['removed']} memorised removed) to "
          f"{args.out}/ in {seconds:.1f}s ({report['kept'] / seconds:.1f} videos/s): Videos/, FileList.csv, "
          "privacy.json.")
    return 0


def cmd_regenerate(args) -> int:
    from harness.regenerate import regenerate

    out = regenerate(args.run_dir, args.sample_id, get_registry(), _cache(args), args.row)
    verdict = "bit-for-bit identical" if out["identical"] else f"DIFFERENT (max |diff| {out['max_abs_diff']:.3g})"
    print(f"{out['sample_id']} of row '{out['row']}' (redrawn with its batch of {out['redrawn_with']}): {verdict}")
    return 0 if out["identical"] else 1


def cmd_bench(args) -> int:
    from harness.context import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda was given but no CUDA GPU is visible; use --device cpu.")
    sizes = {"pairs": ("queries", "references", "dim", "loop_queries", "memory_queries"),
             "content": ("samples", "references", "frames", "stride", "dim"),
             "metrics": ("samples", "references", "test", "dim", "resamples")}[args.bench_command]
    for name in sizes:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number.")
    from harness import bench

    if args.bench_command == "pairs":
        result = bench.bench_pairs(args.queries, args.references, args.dim, device, args.loop_queries,
                                   args.memory_queries)
        report = bench.pairs_report(result)
    elif args.bench_command == "content":
        result = bench.bench_content(args.samples, args.references, args.frames, args.stride, args.dim, device)
        report = bench.content_report(result)
    else:
        result = bench.bench_metrics(_metrics(args.metric), args.samples, args.references, args.test, args.dim,
                                     device, args.resamples)
        report = bench.metrics_report(result)
    print(json.dumps(result, indent=2) if args.json else report)
    return 0


def _metrics(names: list[str] | None) -> dict[str, type]:
    """The registered row metrics `harness bench metrics` times (all of them by default)."""
    registered = get_registry().components["metrics"]
    unknown = sorted(set(names or ()) - set(registered))
    if unknown:
        raise UserError(f"--metric {unknown[0]}: no such metric is registered; known: {', '.join(sorted(registered))}.")
    return {name: registered[name].factory for name in (names or registered)}


def cmd_plugins(args) -> int:
    registry = get_registry()
    if args.json:
        print(json.dumps([p.__dict__ for p in registry.plugins], indent=2))
        return 0
    for info in registry.plugins:
        print(f"{info.name}  ({info.distribution} {info.version}, {info.module})")
        if info.error:
            print(f"    FAILED TO LOAD: {info.error}")
        for role, names in info.components.items():
            print(f"    {ROLES[role].label}s: {', '.join(names)}")
    if not registry.plugins:
        print("no plugins found (is reid-harness installed?)")
    return 0


def cmd_check(args) -> int:
    from harness.check import check_run
    from harness.spec import validate_spec

    spec = validate_spec(args.spec, get_registry()) if args.spec else None
    problems = check_run(args.run, spec)
    for problem in problems:
        print(problem)
    if problems:
        return 2
    against = f"the spec {args.spec}" if args.spec else "the spec its manifest records"
    print(f"{args.run}: clean (benchmark hash, files, environment, sample counts, ranges and per-sample tables "
          f"agree with {against}).")
    return 0


def cmd_leaderboard(args) -> int:
    from harness.check import unchecked_runs
    from harness.leaderboard import load_results, publish_figures, render
    from harness.provenance import mixed_environments

    problems = unchecked_runs(args.runs)
    if problems and not args.allow_unchecked:
        raise UserError("these runs fail `harness check`, so they do not join a table (pass --allow-unchecked to "
                        "show them anyway):\n" + "\n".join(f"  {p}" for p in problems))
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    results = load_results(args.runs)
    warning = mixed_environments(results)
    if warning:
        print(warning, file=sys.stderr)
    if args.out and args.format == "md":
        publish_figures(results, args.out)
    text = render(results, args.format, args.allow_mixed, base=args.out)
    if args.out:
        target = args.out / f"leaderboard.{args.format}"
        atomic_write_text(target, text)
        print(f"wrote {target}")
    else:
        print(text, end="")
    return 0


def cmd_compare(args) -> int:
    from tabulate import tabulate

    from harness.compare import compare

    lines = compare(args.reference, args.run)
    shown = lines.assign(inside=lines["inside"].map({True: "yes", False: "NO"}))
    print(tabulate(shown, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"))
    print(f"{int(lines['inside'].sum())} of {len(lines)} numbers inside the reference's intervals.")
    return 0


def cmd_cache(args) -> int:
    from harness.results import used_artifacts

    cache = _cache(args)
    if args.cache_command == "ls":
        entries = cache.entries()
        for a in entries:
            print(f"{a.stage:<22} {a.key}  {a.size_bytes / 2**20:8.1f} MiB  "
                  f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(a.meta.get('created', 0)))}")
        total = sum(a.size_bytes for a in entries) / 2**20
        print(f"{len(entries)} artifacts, {total:.1f} MiB in {cache.root}")
        return 0
    if not args.leftovers_only and not args.runs.is_dir():
        raise UserError(f"{args.runs}: no run directories here, so every artifact would count as unused; pass "
                        "--runs DIR (where your runs are) or --leftovers-only.")
    keep = None if args.leftovers_only else used_artifacts(args.runs)
    removed = cache.gc(keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} cache entries from {cache.root}")
    return 0


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "validate": cmd_validate, "plugins": cmd_plugins, "bench": cmd_bench,
            "regenerate": cmd_regenerate, "export": cmd_export, "leaderboard": cmd_leaderboard, "check": cmd_check,
            "compare": cmd_compare,
            "cache": cmd_cache}


def main(argv: list[str] | None = None) -> int:
    args = _parser(get_registry()).parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `run --nproc` starts again in each process
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger().addHandler(console)
    try:
        if hasattr(args, "plugin_command"):
            return args.plugin_command(args)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the cache.", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: the disk is full ({exc.filename or 'writing the run'}); free space there and re-run the same "
              "command: the cache keeps every finished stage.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
