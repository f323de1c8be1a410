"""`mammofl certs out_dir=DIR sites=[a,b] [hosts=[localhost,127.0.0.1]] [valid_days=365]`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from common.config.option_values import key_values, whole_number
from common.deploy.certificates import make_consortium
from common.errors import ConfigError

USAGE = (
    "usage: mammofl certs out_dir=DIR sites=[a,b,...] [hosts=[localhost,127.0.0.1]] "
    "[valid_days=365]"
)


def _names(value: str) -> list[str]:
    return [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",") if v.strip()]


def run_certs(args: Sequence[str]) -> int:
    known = ("out_dir", "sites", "hosts", "valid_days")
    options = key_values(args, known)  # each key=value, each key known
    if not {"out_dir", "sites"} <= set(options):
        raise ConfigError(f"{USAGE} (missing out_dir= or sites=)")
    days = whole_number("valid_days", options.get("valid_days", "365"), minimum=1)
    files = make_consortium(
        Path(options["out_dir"]),
        _names(options.get("hosts", "[localhost,127.0.0.1]")),
        _names(options["sites"]),
        valid_days=days,
    )
    print(
        json.dumps(
            {
                "every site gets": str(files.ca_certificate),
                "coordinating centre keeps secret": [str(files.superlink_key), str(files.ca_key)],
                "superlink certificate": str(files.superlink_certificate),
                "site keeps secret": {s: str(p) for s, p in files.site_private_keys.items()},
                "site sends to the coordinating centre": {
                    s: str(p) for s, p in files.site_public_keys.items()
                },
            },
            indent=2,
        )
    )
    return 0
