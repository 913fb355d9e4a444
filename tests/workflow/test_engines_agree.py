"""Snakemake and DVC name the same stages after a params edit, for one param of every section.

No stage runs: every output of the tiny preset is created empty, Snakemake records it as done
(`--touch`) and DVC locks it (`dvc commit`); then each edit is checked with Snakemake's params
trigger (`-n --rerun-triggers params`: the jobs whose params changed and everything downstream)
and DVC (`dvc status`: the stages whose params changed, plus the stages downstream of them in
DVC's graph, which `dvc repro` re-runs once their deps change).
"""

import pytest
import yaml
from conftest import BIN, project_copy, run, snakemake_stages

# one param per section (run is the matrix itself: editing it adds or removes stages)
EDITS = {
    "data": ("data.verify_checksums", False),
    "triplets": ("triplets.sources", ["builtin"]),
    "targets": ("targets.UsedFor", {"rel": "CapableOf"}),
    "split": ("split.seed", 1),
    "models": ("models.tiny-gpt2.lr", 0.004),
    "verbalize": ("verbalize.other_heads", 2),
    "known": ("known.max_tail_ppl", 50.0),
    "controllm": ("controllm.block_size", 64),
    "mask": ("mask.tau", 0.9),
    "train": ("train.steps", 301),
    "eval": ("eval.random_draws", 2),
    "robustness": ("robustness.candidates", 8),
    "baselines": ("baselines.npo.lr", 0.002),
    "report": ("report.dpi", 100),
    "csqa": ("csqa.bootstrap", 500),
    "export": ("export.keep", "subnetwork"),
}


@pytest.fixture(scope="module")
def touched(tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("engines"))
    # a smaller run (fewer jobs to check), still with several targets and seeds (combine_seeds), and
    # a baseline of each recipe (sized by the mask, finetuning)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["run"] = {
        "models": ["tiny-gpt2"],
        "targets": ["IsA", "UsedFor", "csqa1"],
        "seeds": [0, 1],
        "baselines": ["attribution", "npo"],
    }
    params["export"]["seeds"] = [1]  # the default target exports seed 1's masks (a DVC matrix from params)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([BIN / "python", "workflow/dvc_yaml.py", "dvc.yaml"], proj)
    summary = run([BIN / "snakemake", "--summary"], proj).stdout.splitlines()[1:]
    for line in summary:
        path = proj / line.split("\t")[0]
        if not path.suffix:  # a directory output (the report's tables/ and figures/)
            path.mkdir(parents=True, exist_ok=True)
            path = path / "x.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    run([BIN / "snakemake", "--touch", "--forceall", "--cores", "1"], proj)  # records every job's params
    run([BIN / "dvc", "commit", "--force", "--quiet"], proj)
    assert "up to date" in run([BIN / "dvc", "status"], proj).stdout
    return proj


def dvc_stages(proj) -> set[str]:
    """The stages `dvc status` finds changed, with every stage downstream of them (in-process: DVC's
    start-up would double the test's time)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(proj)) as repo:
        changed = {name.split(":")[-1] for name in repo.status()}
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {stage.addressing.split(":")[-1]: stage for stage in graph}
        names = set(changed)
        for name in changed:
            names |= {s.addressing.split(":")[-1] for s in nx.ancestors(graph, by_name[name])}
    return names


def set_key(params: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        params = params[key]
    params[keys[-1]] = value


@pytest.mark.slow
@pytest.mark.parametrize("section", list(EDITS))
def test_a_params_edit_reruns_the_same_stages_in_both_engines(touched, section):
    proj = touched
    original = (proj / "params.yaml").read_text()
    params = yaml.safe_load(original)
    set_key(params, *EDITS[section])
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = run([BIN / "snakemake", "-n", "--rerun-triggers", "params"], proj)
        smk, dvc = snakemake_stages(proc.stdout + proc.stderr, proj), dvc_stages(proj)
    finally:
        (proj / "params.yaml").write_text(original)
    assert smk, f"editing {EDITS[section][0]} re-runs nothing"
    assert smk == dvc
    if section == "csqa":  # a finetuning param re-runs only the finetuning and the report
        assert {name.split("@")[0] for name in smk} == {"finetune_csqa", "report"}
    if section == "robustness":  # a probe's param re-runs only the probes and the report
        assert {name.split("@")[0] for name in smk} == {
            "evaluate_robustness",
            "baseline_robustness",
            "report",
            "export_remaining",
        }  # the card shows its numbers
    if section == "baselines":  # one method's param re-runs only that method's stages and the report
        assert {name.split("@")[0] for name in smk} == {
            "unlearn_baseline",
            "evaluate_baseline",
            "baseline_robustness",
            "report",
        }
        assert all("-npo-" in name for name in smk if name != "report")
    if section == "export":  # what an export keeps re-runs only the exports
        assert smk == {f"export_remaining@tiny-gpt2-{target}-1" for target in ("IsA", "UsedFor", "csqa1")}
