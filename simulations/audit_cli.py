"""`mammofl audit`: membership inference and a one-run epsilon lower bound for one config.

    mammofl audit <hydra overrides> out_dir=DIR [seeds=[42,43,44] shadows=16 canaries=real
        canary_count=M k=[50,100,200] confidence=0.95 fixed_variance=true
        audit_attacks=[lira_online,lira_offline]]
    mammofl audit compare=[DIR_A,DIR_B,...] out_dir=DIR

Exit codes: 0 audited; 2 bad options (ConfigError/DataError, printed by the CLI); 3 a DP
target's empirical epsilon lower bound exceeds the epsilon its ledger accounts (the DP
implementation or its accounting is broken).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.config.option_values import flag, number, seed_numbers, whole_number, whole_numbers
from common.errors import ConfigError
from common.runs.output_lock import output_lock
from simulations.cli import command_usage, split_options

OPTIONS = (
    "audit_attacks",
    "out_dir",
    "seeds",
    "shadows",
    "canaries",
    "canary_count",
    "k",
    "confidence",
    "fixed_variance",
    "compare",
)
EXIT_AUDIT_FAILED = 3


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.strip("[]").split(",") if v.strip()]


def _options(options: dict[str, str], default_seed: int) -> Any:
    from common.audit.attack import AUDIT_ATTACKS
    from common.audit.options import DEFAULT_KS, AuditOptions

    return AuditOptions(
        out_dir=Path(options["out_dir"]),
        seeds=(
            tuple(seed_numbers("seeds", options["seeds"], distinct=False))
            if "seeds" in options
            else (default_seed,)
        ),
        shadows=whole_number("shadows", options.get("shadows", "16")),
        canary_kind=options.get("canaries", "real"),
        canary_count=whole_number("canary_count", options["canary_count"])
        if "canary_count" in options
        else None,
        ks=tuple(whole_numbers("k", options["k"])) if "k" in options else DEFAULT_KS,
        confidence=number("confidence", options.get("confidence", "0.95")),
        fixed_variance=flag("fixed_variance", options.get("fixed_variance", "true")),
        audit_attacks=tuple(_names(options["audit_attacks"]))
        if "audit_attacks" in options
        else AUDIT_ATTACKS,
    )


def _summary(record: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    return {
        "out_dir": str(out_dir),
        "name": record["name"],
        "attacks": {
            attack: {k: v["mean"] for k, v in stats.items()}
            for attack, stats in record["summary"]["attacks"].items()
        },
        "targets": [
            {
                "seed": t["seed"],
                "accounted_epsilon": t["accounted_epsilon"],
                "empirical_epsilon_lower_bound": t["one_run_audit"]["epsilon_lower_bound"],
                "epsilon_ceiling": t["one_run_audit"]["epsilon_ceiling"],
                "k": t["one_run_audit"]["k"],
                "attack": t["one_run_audit"]["attack"],
                "confidence": t["one_run_audit"]["confidence"],
                "canaries_m": t["one_run_audit"]["canaries_m"],
            }
            for t in record["targets"]
        ],
        "passed": record["verdict"]["passed"],
        "conclusive": record["verdict"]["conclusive"],
        **({"note": record["verdict"]["note"]} if record["verdict"]["note"] else {}),
    }


def _shout(record: dict[str, Any]) -> None:
    bar = "!" * 78
    lines = [bar, "PRIVACY AUDIT FAILED"]
    for target in record["targets"]:
        if not target["verdict"]["passed"]:
            lines.append(f"seed {target['seed']}: {target['verdict']['note']}")
    lines += ["Do not rely on this configuration's privacy guarantee until this is explained.", bar]
    print("\n".join(lines), file=sys.stderr)


def cmd_audit(args: Sequence[str]) -> int:
    options, overrides = split_options(args, OPTIONS)
    if "out_dir" not in options:
        raise ConfigError(f"mammofl audit needs out_dir=DIR\n{command_usage('audit')}")
    if "compare" in options:
        from common.audit.report import compare_audits

        extra = sorted(set(options) - {"compare", "out_dir"}) + overrides
        if extra:
            raise ConfigError(f"mammofl audit compare= takes only out_dir=, not {extra}")
        folders = [Path(p) for p in _names(options["compare"])]
        if len(folders) < 1:
            raise ConfigError("compare=[DIR_A,DIR_B]: name at least one audit folder")
        with output_lock("audit", out_dir=Path(options["out_dir"])):
            result = compare_audits(folders, Path(options["out_dir"]))
        print("\n".join(result["table"]))
        print(json.dumps(result["separation_tpr_at_1pct_fpr"], indent=2))
        return 0
    from common.audit.run import run_audit
    from common.config.compose import compose_config

    config = compose_config(overrides)
    audit_options = _options(options, config.seed)
    with output_lock("audit", out_dir=audit_options.out_dir):
        record = run_audit(config, audit_options)
    print(json.dumps(_summary(record, audit_options.out_dir), indent=2))
    if not record["verdict"]["passed"]:
        _shout(record)
        return EXIT_AUDIT_FAILED
    return 0
