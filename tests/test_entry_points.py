"""Every entry point a user touches still starts: scripts, the runner's CLI, the benchmarks.

A rename in the library broke ``benchmarks/bench_plugins.py`` and a study without any
test noticing, because nothing ran them. Here each script of ``examples/``, ``studies/``,
``scripts/`` and each ``benchmarks/bench_*.py`` answers ``--help`` in a subprocess (found
by listing the folders, so a new script is covered the day it is added); those with a
size option also run at a tiny size; ``pytest benchmarks/ --smoke`` runs every benchmark
once; and ``scripts/device_decisive_run.sh --dry-run`` runs the prepared GPU script on the
CPU. Nothing here times anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    path.relative_to(ROOT).as_posix()
    for pattern in ("examples/*.py", "studies/*.py", "scripts/*.py", "scripts/*.sh", "benchmarks/bench_*.py")
    for path in ROOT.glob(pattern)
)


def _run(command: list[str], timeout: float = 300, cwd: Path = ROOT, **extra_env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **extra_env}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def _script(path: str) -> list[str]:
    return ["bash", path] if path.endswith(".sh") else [sys.executable, path]


def _ok(finished: subprocess.CompletedProcess) -> str:
    assert finished.returncode == 0, f"exit {finished.returncode}\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}"
    return finished.stdout


def test_the_listing_finds_the_scripts():
    assert {"examples/simclr_tase.py", "studies/pseudo_label_quality.py", "scripts/device_decisive_run.sh"} <= set(
        SCRIPTS
    )
    assert "benchmarks/bench_plugins.py" in SCRIPTS and "benchmarks/conftest.py" not in SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS)
def test_script_answers_help(path):
    if path.endswith(".sh") and shutil.which("bash") is None:
        pytest.skip("no bash")
    out = _ok(_run([*_script(path), "--help"], timeout=120))
    assert "usage" in out.lower(), out[:500]


@pytest.mark.parametrize("command", [["--help"], ["--list-methods"]])
def test_runner_cli_answers(command):
    out = _ok(_run([sys.executable, "-m", "tase_loss.experiments", *command], timeout=120))
    assert ("usage: tase-experiment" in out) if command == ["--help"] else ("tase-oracle" in out and "rwsam" in out)


def test_installed_console_script_answers_help():
    program = shutil.which("tase-experiment")
    if program is None:
        pytest.skip("tase-experiment is not on PATH (the package is not installed)")
    assert "usage: tase-experiment" in _ok(_run([program, "--help"], timeout=120))


TINY_RUNS = {
    "examples/simclr_tase.py": (["--epochs", "2", "--warmup-epochs", "1"], "frequencies estimated: True"),
    "examples/moco_v2_tase.py": (["--epochs", "2", "--warmup-epochs", "1"], "queue"),
    "examples/byol_simsiam_tase.py": (["--epochs", "2", "--warmup-epochs", "1", "--variant", "simsiam"], "epoch 1"),
    "benchmarks/bench_estimators.py": (
        ["--sizes", "1000", "--exact-up-to", "1000", "--threads", "1", "--repeats", "2", "--memory"],
        "| bytes per sample |",
    ),
    "benchmarks/bench_plugins.py": (["--samples", "300", "--repeats", "1"], "rwSAM"),
    "benchmarks/bench_runner.py": (
        ["--device", "cpu", "--encoder", "tiny-cnn", "--batch-size", "16", "--images", "64", "--epochs", "1",
         "--precision", "fp32", "--methods", "ntxent,tase"],
        '"epoch_seconds"',
    ),
    "studies/frequency_estimators.py": (
        ["--dims", "32", "--seeds", "0", "--max-count", "100", "--skip-digits", "--cifar", "none", "--output", "{tmp}"],
        "meets the most targets",
    ),
    "studies/stable_count_trust.py": (["--max-count", "100", "--dims", "32", "--seeds", "0"], "| high |"),
    "studies/stable_count_grouping.py": (
        [
            *("--configurations", "10:0.1,10:0.1:5:1:0.75:1", "--max-count", "100", "--dims", "32", "--seeds", "100"),
            *("--digits-seeds", "0", "--output", "{tmp}"),
        ],
        "| 10 | 0.1 | 10 + 10 | 5, 1 | 0.75 | yes |",
    ),
    "studies/stable_count_seeds.py": (
        ["--max-count", "100", "--dims", "32", "--seeds", "0", "--offsets", "0,1000"],
        "| third-grouping | mixture's + 1000 |",
    ),
    "studies/stable_count_within.py": (
        ["--values", "0.5", "--max-count", "100", "--dims", "32", "--seeds", "100"], "The rule picks within = 0.5"
    ),
    "studies/warmup.py": (["--epochs", "2", "--seeds", "0", "--warmups", "1", "--output", "{tmp}"], "warm-up **1**"),
    "benchmarks/bench_fused.py": (
        ["--rows", "128", "--rounds", "1", "--memory-rows", "128", "--moco-queue", "128"],
        '"over_gemm3"',
    ),
}


@pytest.mark.parametrize("path", sorted(TINY_RUNS))
def test_script_runs_at_a_tiny_size(path, tmp_path):
    arguments, expected = TINY_RUNS[path]
    out = _ok(_run([*_script(path), *(argument.format(tmp=tmp_path) for argument in arguments)]))
    assert expected in out, out[-2000:]


def test_ood_two_stage_example_runs_at_a_tiny_size():
    # it drops partial batches, so some ID rows never reach the bank (the sampler leaves them out)
    arguments = ["--seeds", "0", "--epochs", "4", "--ood-size", "200", "--methods", "nt-xent", "ood-guided"]
    out = _ok(_run([sys.executable, "examples/ood_two_stage_digits.py", *arguments]))
    assert "| ood-guided |" in out


def test_memory_probe_module_reports_json():
    out = _ok(_run([sys.executable, "-m", "benchmarks.memory", "plain", "--batch", "8", "--dim", "4"], timeout=120))
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "ok" and result["peak_mib"] >= result["import_mib"] > 0


def test_a_missing_data_file_names_the_option_and_the_variable(tmp_path):
    missing = tmp_path / "absent.npz"
    finished = _run([sys.executable, "benchmarks/bench_plugins.py", "--pixels", "--data", str(missing)], timeout=120)
    assert finished.returncode == 2 and "--data" in finished.stderr and "TASE_LOSS_DATA" in finished.stderr
    # without --data the file is looked up in TASE_LOSS_DATA
    finished = _run(
        [sys.executable, "benchmarks/bench_plugins.py", "--pixels"], timeout=120, TASE_LOSS_DATA=str(tmp_path)
    )
    assert finished.returncode == 2 and str(tmp_path / "cifar10_lt_r100.npz") in finished.stderr
    finished = _run(
        [sys.executable, "-m", "pytest", "benchmarks/", "--co", "-q", "-p", "no:cacheprovider",
         "--bench-cifar-lt", str(missing)],
        timeout=120,
    )
    assert finished.returncode != 0 and "TASE_LOSS_DATA" in finished.stdout + finished.stderr


def test_estimator_study_names_each_merged_run_by_its_own_job(tmp_path):
    """A merged results.json lists one config per job; a ``tase`` run's estimator is its
    job's, not the first job's (an NT-Xent job's settings name the package default)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("frequency_estimators", ROOT / "studies/frequency_estimators.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)

    def job(method, seed, estimator):
        return {"methods": [method], "seeds": [seed], "settings": {"tase": {"estimator": estimator}}}

    def run(method, seed):
        history = [{"epoch": 0, "spearman": 0.1 * (seed + 1)}]
        return {"method": method, "seed": seed, "history": history, "linear": {"few": 1.0, "all": 2.0}}

    merged = {
        "config": [job("ntxent", 0, "knn-density"), job("tase", 0, "stable-count"), job("tase", 1, "merged-clusters")],
        "runs": [run("ntxent", 0), run("tase", 0), run("tase", 1)],
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(merged))
    rows = study._last_estimates(str(path), "data")
    assert [(row["seed"], row["estimator"], row["spearman"]) for row in rows] == [
        (0, "stable-count", 0.1),
        (1, "merged-clusters", 0.2),
    ]


@pytest.mark.slow
def test_pseudo_label_quality_study_on_a_runner_checkpoint(tmp_path):
    """The runner trains one tiny digits encoder; the studies that read checkpoints read it."""
    output = tmp_path / "run"
    _ok(_run([sys.executable, "-m", "tase_loss.experiments", "--methods", "ntxent", "--seeds", "0", "--epochs", "1",
              "--checkpoint-every", "1", "--no-progress", "--output", str(output)]))
    checkpoint = output / "checkpoints" / "ntxent_seed0.pt"
    rows = tmp_path / "rows.json"
    _ok(_run([sys.executable, "studies/pseudo_label_quality.py", "--checkpoints", str(checkpoint),
              "--multipliers", "1", "--output", str(rows)]))
    result = json.loads(rows.read_text())
    k_rows = [row for row in result["rows"] if row["k"] == 10]
    assert len(k_rows) == 1 and 0.0 <= k_rows[0]["nmi"] <= 1.0 and 0.0 < result["true_few_over_many"] < 1.0
    table = _ok(_run([sys.executable, "studies/density_smoothing.py", "--checkpoints", str(checkpoint),
                      "--neighbors", "10", "--rounds", "0,3", "--graph", "20"]))
    assert table.count("| ntxent_seed0.pt |") == 6, table  # 2 feature kinds x (stable-count + 2 densities)


@pytest.mark.slow
def test_benchmarks_smoke_sweep_runs_every_benchmark(tmp_path):
    report = tmp_path / "report.md"
    out = _ok(_run([sys.executable, "-m", "pytest", "benchmarks/", "--smoke", "-q", "-p", "no:cacheprovider",
                    "--bench-report", str(report)], timeout=600))
    assert "passed" in out, out[-3000:]
    text = report.read_text()
    for table in ("Trust: NT-Xent", "Peak memory per call", "NT-Xent forward+backward time", "k-means time",
                  "k-means quality", "TASE overhead: loss", "TASE overhead: full training step"):
        assert table in text, table
    trust = text.split("### Trust")[1].split("###")[0]
    assert "| lightly |" in trust and "| pml |" in trust  # the peers side by side (ok or skipped with a reason)


@pytest.mark.slow
def test_device_script_dry_run_runs_every_step(tmp_path):
    if shutil.which("bash") is None or shutil.which("tar") is None:
        pytest.skip("needs bash and tar")
    out = tmp_path / "out"
    finished = _run(
        ["bash", "scripts/device_decisive_run.sh", "--dry-run"], timeout=900, OUT=str(out), PYTHON=sys.executable
    )
    steps = (out / "steps.log").read_text() if (out / "steps.log").is_file() else ""
    assert finished.returncode == 0, steps + finished.stdout[-3000:] + finished.stderr[-2000:]
    for step in ("data", "build-extension", "extension", "op-tests", "bench-fused", "bench-runner", "decisive"):
        assert f"== {step}: ok" in steps, steps
    results = json.loads((out / "decisive" / "results.json").read_text())
    assert {run["method"] for run in results["runs"]} == {"ntxent", "tase", "tase-oracle", "tase-input", "ts", "rwsam"}
    assert "parallel" in json.loads((out / "bench_runner.json").read_text())
