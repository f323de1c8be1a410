"""`mammofl bench gan` prints eager, fast and batched side by side; the prepared GPU check runs
at toy size on a CPU and writes its summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations import gpu_check
from simulations.cli import main


def test_gan_benchmark_prints_the_paths_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gan.json"
    options = ["sizes=tiny", "steps=2", "gans=2", "dp=both", "device=cpu", f"json={out}"]
    assert main(["bench", "gan", *options]) == 0
    text = capsys.readouterr().out
    assert "device: cpu" in text and "projection: 2 GANs x 1400 epochs" in text
    rows = [line for line in text.splitlines() if line.startswith("tiny")]
    assert [r.split()[3] for r in rows] == ["eager", "fast", "batched", "eager", "fast"]
    assert all(r.split()[-3].endswith("x") for r in rows)
    results = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["gans"], r["dp"]) for r in results] == [
        ("eager", 1, False),
        ("fast", 1, False),
        ("batched", 2, False),
        ("eager", 1, True),
        ("fast", 1, True),
    ]
    assert all(r["steps_per_second"] > 0 and r["precision"] == "fp32" for r in results)
    assert [r["channels_last"] for r in results] == [False, True, True, False, False]


def test_gpu_check_sections_and_verdict(tmp_path: Path) -> None:
    full = gpu_check.sections(tmp_path, tiny=False, device="cuda", compile_=True)
    assert gpu_check.BUDGET_S <= 8 * 60  # every section's limit is cut to what is left of it
    assert [s.name for s in full][:3] == ["environment", "gan", "features"]  # the GAN first
    gan = next(s for s in full if s.name == "gan")
    assert "sizes=full" in gan.args and "gans=3" in gan.args and "batch=16" in gan.args
    assert any("cells=51" in s.args for s in full) and full[-1].name == "gan-compile"
    parsed = {
        "results": [
            {"mode": "eager", "gans": 1, "dp": False, "steps_per_second": 70.0},
            {
                "mode": "batched",
                "gans": 3,
                "dp": False,
                "steps_per_second": 140.0,
                "precision": "bf16",
                "channels_last": True,
                "compile": "none",
                "projected_s": 690.0,
            },
        ]
    }
    (line,) = gpu_check.gan_verdict(parsed)
    assert "2.00x eager per GAN, 6.00x throughput" in line and "11.5 min" in line


@pytest.mark.slow
def test_gpu_check_runs_at_toy_size_on_cpu(tmp_path: Path) -> None:
    """The whole script, every section as a subprocess (about 40 s on 2 cores)."""
    assert gpu_check.main([str(tmp_path), "device=cpu", "tiny=true"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["rc"] for s in summary["sections"]] == [0] * 5
    assert "## gan: rc 0" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "gan.json").read_text())["results"]
