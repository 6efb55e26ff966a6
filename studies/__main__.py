"""`python -m studies <study> run|report [ARGS]`: the shared command line of the studies.

    python -m studies bench run [--only mlm,deberta --baseline DIR ...]     # make bench; writes results/bench.json
    python -m studies escape run NAME --experiment ablation-nsp --row DOC-SENTENCES --preset cpu [--set ...]
    python -m studies escape report                                          # studies/plateau/README.md, curves.png
    python -m studies finetune-spread run NAME --row DOC-SENTENCES --preset cpu --runs 5 [--set finetune.*=...]
    python -m studies finetune-spread report                                 # studies/finetune_spread/README.md
    python -m studies tasks run NAME ROW_FILE ROW_FILE                         # a learned row and a bag of words
    python -m studies tasks report                                           # studies/tasks/README.md
    python -m studies precision run NAME ROW_FILE                            # one row under each precision
    python -m studies precision report                                       # studies/precision/README.md
    python -m studies gpu-check [--out results/gpu-check --steps parity,smoke,bench,medium]    # make gpu-check
    python -m studies gpu-carry [--to .gpu-carry]                            # make gpu-carry

Each study is also its own module (`python -m studies.bench`, `studies.plateau`, `studies.finetune_spread`);
`python -m studies <study> run --help` shows its options.
"""
from __future__ import annotations

import importlib
import sys

# the name on the command line -> (module, whether it has a `report` of committed runs)
STUDIES = {
    "bench": ("studies.bench", False),
    "escape": ("studies.plateau", True),
    "finetune-spread": ("studies.finetune_spread", True),
    "tasks": ("studies.tasks", True),
    "precision": ("studies.precision", True),
}
ALIASES = {"plateau": "escape", "finetune_spread": "finetune-spread"}
# commands that measure or prepare the suite itself, with their own options (no run / report)
COMMANDS = {"gpu-check": "studies.gpu_check", "gpu-carry": "studies.gpu_carry"}


def usage() -> str:
    return __doc__.split("\n\n")[1] if __doc__ else ""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    if argv[0] in COMMANDS:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    name = ALIASES.get(argv[0], argv[0])
    if name not in STUDIES or len(argv) < 2 or argv[1] not in ("run", "report"):
        print(f"usage: python -m studies {{{','.join(STUDIES)}}} {{run,report}} [ARGS]\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module_name, has_report = STUDIES[name]
    module = importlib.import_module(module_name)
    command, rest = argv[1], argv[2:]
    if not has_report:  # the bench has no committed report to rebuild: `run` is the whole command line
        if command == "report":
            print("python -m studies bench: the bench reports as it runs (results/bench.json); its committed runs "
                  "are described in studies/bench/README.md", file=sys.stderr)
            raise SystemExit(2)
        return module.main(rest)
    return module.main([command, *rest])


if __name__ == "__main__":
    main()
