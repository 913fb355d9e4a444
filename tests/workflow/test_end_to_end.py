"""The whole tiny preset, cut to seconds per stage (tests/smoke.yaml: 1 target, 1 seed, a few
steps), through results/report.md with Snakemake, without the network (the local mirror); then
the same outputs through DVC: `dvc commit` finds the Snakemake outputs are exactly its stages'
outputs, `dvc push` to a local remote and `dvc pull` in a fresh clone restore data/processed and
results/, and `dvc metrics diff` compares two commits."""

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import BIN, MIRROR, project_copy, run

from knowsubnet.method.baselines import METHODS as BASELINES

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MIRROR.is_dir(), reason="local data mirror not present")]


def merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def hashes(root, *folders) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def git(proj, *args):
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], proj)


def test_tiny_preset_end_to_end_then_dvc_push_pull_and_metrics_diff(tmp_path):
    proj = project_copy(tmp_path)
    params = merge(
        yaml.safe_load((proj / "params.yaml").read_text()), yaml.safe_load((proj / "tests" / "smoke.yaml").read_text())
    )
    # every baseline beside the mask, the finetuning ones cut to a few steps
    short = {"steps": 4, "select_every": 2}
    params = merge(
        params, {"run": {"baselines": list(BASELINES)}, "baselines": {"graddiff": short, "npo": short, "rmu": short}}
    )
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([BIN / "python", "workflow/dvc_yaml.py", "dvc.yaml"], proj)  # dvc.yaml follows `run` in params.yaml

    # Snakemake: everything, report included
    run([BIN / "snakemake", "--cores", "2"], proj)
    report = (proj / "results" / "report.md").read_text()
    assert "IsA" in report and "tiny-gpt2" in report
    assert json.loads((proj / "results/eval/tiny-gpt2/IsA/seed0/headline.json").read_text())["sparsity"] > 0
    assert not any(b"\r" in p.read_bytes() for p in (proj / "logs").rglob("*.log"))  # no progress-bar frames
    # every figure and table report.md links to is a declared output, and `snakemake --report` shows them
    linked = set(re.findall(r"\]\((figures/[^)]+\.png)\)", report))
    assert linked and all((proj / "results" / name).is_file() for name in linked)
    run([BIN / "snakemake", "--report", "report.html"], proj)
    html = (proj / "report.html").read_text()
    for name in [*linked, "tables/summary.csv", "tables/ablation.csv", "report.md"]:
        assert Path(name).name in html, name
    assert list((proj / "results" / "benchmarks" / "discover_mask").rglob("*.tsv"))  # `benchmark:` timings
    # the comparison: one row per method (the mask and each baseline), each with its test ratios
    comparison = pd.read_csv(proj / "results" / "tables" / "comparison.csv")
    assert sorted(comparison["method"]) == sorted(["mask", *BASELINES])
    assert comparison["targetkg_x"].notna().all() and comparison["test_heldout_wording_ratio"].notna().all()
    assert "figures/comparison_tradeoff.png" in linked
    sized = comparison[comparison["method"].isin(["mask", "random_magnitude", "attribution"])]
    assert sized["changed_weights"].nunique() == 1  # exactly the mask's size

    # DVC: the same stages and outputs; push, then pull into a fresh clone
    run([BIN / "dvc", "commit", "--force", "--quiet"], proj)
    assert "up to date" in run([BIN / "dvc", "status"], proj).stdout
    run([BIN / "dvc", "remote", "add", "--force", "--default", "test", str(tmp_path / "remote")], proj)
    run([BIN / "dvc", "push", "--quiet"], proj)
    git(proj, "add", "-A")
    git(proj, "commit", "-qm", "tiny run")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(proj), str(clone)], tmp_path)
    run([BIN / "dvc", "pull", "--quiet"], clone)
    pulled = hashes(clone, "data/processed", "results")
    assert pulled == {k: v for k, v in hashes(proj, "data/processed", "results").items() if k in pulled}
    assert "results/masks/tiny-gpt2/IsA/seed0/mask.safetensors" in pulled
    assert "results/report.md" in pulled and "data/processed/splits/IsA/targetkg_train.parquet" in pulled

    # metrics: headline numbers only, and a diff between two commits
    shown = json.loads(run([BIN / "dvc", "metrics", "show", "--json"], proj).stdout)
    files = next(iter(shown.values()))["data"]
    headline = files["results/eval/tiny-gpt2/IsA/seed0/headline.json"]["data"]
    assert "dppl_removed_targetkg" in headline and "verdict" in headline and "met_min_sparsity" in headline
    # `dvc plots show`: the report's figures, the validation curves and the trade-off
    plots = json.loads(run([BIN / "dvc", "plots", "show", "--json"], proj).stdout)
    ids = set(plots.get("data", plots))
    assert {"validation_targetkg_ppl", "tradeoff"} <= ids and any(i.endswith(".png") for i in ids), ids
    # a second commit with other numbers (as a re-run would write them), recorded by DVC
    path = proj / "results/eval/tiny-gpt2/IsA/seed0/headline.json"
    path.write_text(json.dumps({**headline, "dppl_random_targetkg": headline["dppl_random_targetkg"] + 1.0}))
    run([BIN / "dvc", "commit", "--force", "--quiet"], proj)
    git(proj, "add", "-A")
    git(proj, "commit", "-qm", "other numbers")
    diff = run([BIN / "dvc", "metrics", "diff", "HEAD~1", "--json"], proj).stdout
    assert "dppl_random_targetkg" in diff, diff
