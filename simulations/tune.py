"""`mammofl tune space=NAME out_dir=DIR [seeds=[42,43]] <overrides>`: the recipe search.

Runs (or resumes) the search space configs/tune/NAME.yaml (or a YAML path) on the config's
training data and selection hold-out only (test sets are dropped), then prints the summary;
tune.csv ranks the candidates by mean hold-out AUROC. See docs/recipes.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from common.config.option_values import seed_numbers
from common.errors import ConfigError
from common.runs.output_lock import output_lock
from common.runs.tuning import load_space, run_search


def cmd_tune(args: Sequence[str]) -> int:
    from simulations.cli import split_options

    options, rest = split_options(args, ("space", "out_dir", "seeds"))
    if "space" not in options or "out_dir" not in options:
        raise ConfigError("usage: mammofl tune space=NAME out_dir=DIR [seeds=[42,43]] <overrides>")
    seeds = seed_numbers("seeds", options["seeds"]) if "seeds" in options else None
    with output_lock("tune", out_dir=Path(options["out_dir"])):
        summary = run_search(load_space(options["space"]), rest, Path(options["out_dir"]), seeds)
    keys = ("candidates", "cell_runs", "best", "privacy_note")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0
