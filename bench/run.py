"""Run one benchmark scenario: `python bench/run.py NAME [--quick] [SCENARIO OPTIONS]`, or `--list`.

Scenario options (e.g. `detect --mode kill --profile fast`) are those its module declares in
`add_arguments(parser)`; `python bench/run.py NAME --help-options` shows them.

Progress goes to stderr, a short human summary to stdout, and the LAST stdout line is one JSON
object with the figures. Exit codes: 0 ok, 1 the scenario failed (JSON has "error"),
2 usage error (e.g. unknown scenario).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import scenarios  # noqa: E402
from bench.common import BenchError  # noqa: E402


def code_fingerprint() -> str:
    """First 12 hex digits of a SHA-256 over the mesh package's Python sources (path and
    content): which code a run measured. Others may edit mesh/ while a benchmark runs."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "mesh").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            pass
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def scenario_options(module, name: str, extra: list[str]) -> dict:
    """Options of the scenario itself: a scenario module may define
    `add_arguments(parser)`; what it adds is parsed from the rest of the command line and
    passed to its `run` as keyword arguments. Unknown options are a usage error (exit 2)."""
    add = getattr(module, "add_arguments", None)
    doc = (module.__doc__ or "").strip().splitlines()
    sub = argparse.ArgumentParser(prog=f"bench/run.py {name} [--quick]", add_help=False,
                                  description=doc[0] if doc else None)
    sub.add_argument("--help-options", action="help", help="show this scenario's options and exit")
    if add is not None:
        add(sub)
    return vars(sub.parse_args(extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="scenario to run (see --list)")
    parser.add_argument("--quick", action="store_true", help="shorter windows, for smoke tests")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    args, extra = parser.parse_known_args(argv)
    known = scenarios.available()
    if args.list:
        width = max(map(len, known), default=0)
        for name, desc in known.items():
            print(f"{name:<{width}}  {desc}")
        return 0
    if not args.name:
        parser.error("a scenario NAME or --list is required")
    if args.name not in known:
        print(f"bench/run.py: unknown scenario {args.name!r}; available: "
              f"{', '.join(known) or '(none)'}", file=sys.stderr)
        return 2
    module = scenarios.load(args.name)
    options = scenario_options(module, args.name, extra)  # exits 2 on a usage error
    # Turn SIGTERM into SystemExit so scenarios' cleanup (stopping agents) runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    code = code_fingerprint()
    try:
        result = module.run(quick=args.quick, **options)
    except BenchError as exc:
        result = {"scenario": args.name, "error": str(exc)}
    except Exception as exc:  # a bug or an environment problem: show it, still end with JSON
        traceback.print_exc()
        result = {"scenario": args.name, "error": f"{type(exc).__name__}: {exc}"}
    result.setdefault("scenario", args.name)
    result["quick"] = args.quick
    result["bench_wall_s"] = round(time.monotonic() - t0, 2)
    result["mesh_code"] = code
    if code_fingerprint() != code:
        result["mesh_code_changed_during_run"] = [code, code_fingerprint()]
        print(f"bench/run.py: WARNING: mesh/ changed during the run ({code} -> {code_fingerprint()}): "
              "agents started at different times may run different code", file=sys.stderr)
    for key in ("summary",):
        for line in result.pop(key, []):
            print(line)
    if result.get("error"):
        print(f"bench/run.py: {args.name} FAILED: {result['error']}", file=sys.stderr)
    print(json.dumps(result, sort_keys=False), flush=True)
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
