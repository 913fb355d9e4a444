"""The README's commands work as documented: every command of its "Running it" table runs here on
a copy of the project (the long ones as dry runs, `dvc status` for what `dvc repro` would run), and
its picture of the pipeline draws only stages and edges the Snakemake rules have.

A command added to the table without a check here fails `test_every_command_has_a_check`."""

import re
import shlex

import pytest
import yaml
from conftest import BIN, REPO_ROOT, project_copy, run, snakemake_stages

README = (REPO_ROOT / "README.md").read_text()
VENV = BIN.parent


def table_commands() -> list[str]:
    section = README.split("## Running it", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\|[^|]+\| `([^`]+)` \|$", section, re.M)]


def make(proj, *args, check=True):
    # -o: the virtual environment counts as installed (make setup is CI's first step, not this test's)
    return run(["make", "-o", f"{VENV}/.installed", f"VENV={VENV}", *args], proj, check=check)


def dvc_status_stages(proj) -> set[str]:
    out = run([BIN / "dvc", "status"], proj).stdout
    return {line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith((" ", "\t"))}


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("readme"))
    (proj / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())  # as cloned: the relative mirror
    run(["git", "add", "-A"], proj)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], proj)
    return proj


def dry(cmd: str, *rules: str, targets: tuple[str, ...] = ()):
    def check(proj):
        out = run(shlex.split(cmd) + ["-n"], proj)  # shlex: a quoted --config list stays one word
        text = out.stdout + out.stderr
        assert "discover_mask" in text or "export_remaining" in text
        assert all(f"rule {rule}:" in text for rule in rules), rules
        assert all(f"target={target}," in text for target in targets), targets

    return check


def make_dry(target: str):
    def check(proj):
        out = make(proj, target, "SMK_ARGS=-n")
        assert "This was a dry-run" in out.stdout + out.stderr

    return check


def fast_lane(proj):
    recipe = make(proj, "-n", "test-fast").stdout
    assert '-m "not slow"' in recipe and "-n 2" in recipe  # the command itself is the rest of this suite


def one_param(proj):
    out = run(["snakemake", "--cores", "2", "--config", "train__steps=100", "-n", "-p"], proj)
    params = re.search(r"--params (\S+)", out.stdout).group(1)
    assert yaml.safe_load((proj / params).read_text())["train"]["steps"] == 100


def preset_under_dvc(*args: str, expect: str = "discover_mask@smollm2-135m-fruit-0"):
    """`make params PRESET=demo [OVERLAY=…]` writes params.yaml and dvc.yaml for it: `dvc status`
    names exactly the stages Snakemake would run for it."""

    def check(proj):
        try:
            make(proj, "params", *args)
            dvc = dvc_status_stages(proj)
            smk = snakemake_stages(run([BIN / "snakemake", "-n"], proj).stdout, proj)
            assert dvc == smk and expect in dvc
            assert not any("tiny-gpt2" in name for name in dvc)
        finally:
            make(proj, "params")
        assert run(["git", "status", "--porcelain", "params.yaml", "dvc.yaml"], proj).stdout == ""  # the default again

    return check


def dvc_status(proj):
    assert "report" in dvc_status_stages(proj)


def queue(cmd: str, experiments: int):
    def check(proj):
        queue_cmd = (
            cmd.split(" && ")[0]
            .replace("dvc exp run ", "dvc exp run --queue ", 1)
            .replace("--queue --queue", "--queue")
        )
        try:
            run(["sh", "-c", queue_cmd], proj)
            queued = [
                line for line in run([BIN / "dvc", "queue", "status"], proj).stdout.splitlines() if "Queued" in line
            ]
            assert len(queued) == experiments
        finally:
            run([BIN / "dvc", "queue", "remove", "--queued"], proj)

    return check


def default_params(proj):
    make(proj, "params")
    assert run(["git", "status", "--porcelain"], proj).stdout == ""  # the committed params.yaml and dvc.yaml


def lint(proj):
    out = run([BIN / "snakemake", "--lint"], proj, check=False)
    lints = re.findall(r"^\s+\* (.+?):?$", out.stdout + out.stderr, re.M)
    # the two the rule files explain in a comment (workflow/rules/common.smk)
    explained = {
        "Shell command directly uses variable PARAMS from outside of the rule",
        "Environment variable PATH used but not asserted with envvars directive in line",
    }
    assert all(any(title.startswith(e) for e in explained) for title in lints), set(lints)
    # what the README says it prints: the count, and the exit status
    said = re.search(r"^\| lint the workflow: (\d+) lints, exit status (\d+),", README, re.M)
    assert said, "the README's lint row states no count"
    assert (len(lints), out.returncode) == (int(said.group(1)), int(said.group(2))), out.stdout[-2000:]


def bench(proj):
    recipe = make(proj, "-n", "bench").stdout
    assert "benchmarks/bench_mask_step.py" in recipe
    out = run(
        [BIN / "python", "benchmarks/bench_mask_step.py", "--only", "tiny", "--steps", "1", "--threads", "1"], proj
    )
    assert "| mask step |" in out.stdout and "mask / floor" in out.stdout and "native bf16 flags" in out.stdout


def stage_help(proj):
    out = run([BIN / "knowsubnet", "discover_mask", "--help"], proj).stdout
    assert "--out-dir" in out and "--params" in out and "mask, train, known" in out, out


# the search's commands (issue 29), each named once: the README's table row and its dry run
DEMO_SWEEP = "snakemake sweep --cores 2 --configfile config/presets/demo.yaml config/overlays/demo-short.yaml "
SWEEP_SCREEN = DEMO_SWEEP + "config/overlays/demo-sweep.yaml"
SWEEP_SEEDS = DEMO_SWEEP + "config/overlays/demo-sweep-seeds.yaml"
FIVE_TARGETS = SWEEP_SEEDS + ' --config \'run__targets=["IsA","AtLocation","fruit","sun","swimming"]\''
SWEEP_BY_WORDINGS = SWEEP_SEEDS + " --config sweep__choose_by=wordings"
SUPPRESS_SEEDS = DEMO_SWEEP + "config/overlays/demo-sweep-suppress-seeds.yaml"
STRONGER = DEMO_SWEEP + "config/overlays/demo-sweep-stronger.yaml"
SUBJECT = DEMO_SWEEP + "config/overlays/demo-sweep-subject.yaml"
NPO_OBJECTIVE = DEMO_SWEEP + "config/overlays/demo-sweep-npo-objective.yaml"
ROBUST = DEMO_SWEEP + "config/overlays/demo-sweep-robust.yaml"
ADVERSARY = DEMO_SWEEP + "config/overlays/demo-sweep-adversary.yaml"
ADOPTED = (
    "snakemake sweep sweep_robustness --cores 2 --configfile config/presets/demo.yaml config/overlays/demo-short.yaml "
    "config/overlays/demo-sweep-adopted.yaml"
)
# the rules of a mask-only sweep that chooses by the held-out-wording check (the last five above)
CHOICE_BY_WORDINGS = (
    "discover_mask",
    "sweep_mask",
    "sweep_val_wordings_preset",
    "sweep_val_wordings_mask",
    "sweep_select",
)

CHECKS = {
    "make run": make_dry("run"),
    "make run-tiny": make_dry("run-tiny"),
    "make test-fast": fast_lane,
    "make demo": make_dry("demo"),
    "snakemake --cores 2 --configfile config/presets/demo.yaml config/mirror-local.yaml": dry(
        "snakemake --cores 2 --configfile config/presets/demo.yaml config/mirror-local.yaml"
    ),
    "snakemake --cores 2 --configfile config/presets/demo.yaml config/overlays/demo-baselines.yaml": dry(
        "snakemake --cores 2 --configfile config/presets/demo.yaml config/overlays/demo-baselines.yaml",
        "prune_baseline",
        "unlearn_baseline",
        "evaluate_baseline",
        "baseline_robustness",
    ),
    "snakemake --cores 2 --configfile config/presets/demo.yaml config/overlays/demo-csqa.yaml": dry(
        "snakemake --cores 2 --configfile config/presets/demo.yaml config/overlays/demo-csqa.yaml", "finetune_csqa"
    ),
    "make params PRESET=demo OVERLAY=demo-csqa && dvc repro": preset_under_dvc(
        "PRESET=demo", "OVERLAY=demo-csqa", expect="finetune_csqa@smollm2-135m-csqa2-0-head"
    ),
    "snakemake --cores 2 --config train__steps=100": one_param,
    "make params PRESET=demo && dvc repro": preset_under_dvc("PRESET=demo"),
    "make params PRESET=demo OVERLAY=demo-baselines && dvc repro": preset_under_dvc(
        "PRESET=demo", "OVERLAY=demo-baselines", expect="unlearn_baseline@smollm2-135m-fruit-npo-0"
    ),
    "dvc status": dvc_status,
    "dvc repro": dvc_status,  # what it would run; a real run is tests/workflow/test_end_to_end.py
    "dvc exp run -S train.lambda_controlkg=5": queue("dvc exp run -S train.lambda_controlkg=5", 1),
    "dvc exp run --queue -S 'mask.init_prob=0.03,0.1' && dvc queue start": queue(
        "dvc exp run --queue -S 'mask.init_prob=0.03,0.1'", 2
    ),
    "make params": default_params,
    "snakemake --profile workflow/profiles/slurm-small --configfile config/presets/demo.yaml": dry(
        "snakemake --profile workflow/profiles/slurm-small --configfile config/presets/demo.yaml"
    ),
    "snakemake --cores 2 results/remaining/tiny-gpt2/IsA/seed0": dry(
        "snakemake --cores 2 results/remaining/tiny-gpt2/IsA/seed0"
    ),
    "snakemake --report results/report.html": None,  # needs a finished run: tests/workflow/test_end_to_end.py
    "snakemake --lint": lint,
    "knowsubnet discover_mask --help": stage_help,
    "make bench": bench,
    SWEEP_SCREEN: dry(
        SWEEP_SCREEN,
        "sweep_point",
        "sweep_mask",
        "sweep_graddiff",
        "sweep_npo",
        "sweep_rmu",
        "sweep_attribution",
        "sweep_evaluate_mask",
        "sweep_evaluate_baseline",
        "sweep_select",
    ),
    SWEEP_SEEDS: dry(
        SWEEP_SEEDS,
        "discover_mask",
        "sweep_mask",
        "sweep_npo",
        "sweep_rmu",
        "sweep_graddiff",
        "sweep_attribution",
        "sweep_evaluate_baseline",
        "sweep_select",
    ),
    FIVE_TARGETS: dry(
        FIVE_TARGETS,
        "sweep_npo",
        "sweep_rmu",
        "sweep_graddiff",
        "sweep_attribution",
        "sweep_select",
        targets=("IsA", "AtLocation", "fruit", "sun", "swimming"),
    ),
    SWEEP_BY_WORDINGS: dry(
        SWEEP_BY_WORDINGS,
        "sweep_val_wordings_preset",
        "sweep_val_wordings_mask",
        "sweep_val_wordings_baseline",
        "sweep_select",
    ),
    SUPPRESS_SEEDS: dry(SUPPRESS_SEEDS, *CHOICE_BY_WORDINGS, targets=("IsA", "AtLocation")),
    STRONGER: dry(STRONGER, *CHOICE_BY_WORDINGS, targets=("IsA",)),
    SUBJECT: dry(SUBJECT, *CHOICE_BY_WORDINGS, targets=("IsA",)),
    NPO_OBJECTIVE: dry(NPO_OBJECTIVE, *CHOICE_BY_WORDINGS, targets=("IsA",)),
    ROBUST: dry(ROBUST, *CHOICE_BY_WORDINGS, targets=("IsA",)),
    ADVERSARY: dry(ADVERSARY, *CHOICE_BY_WORDINGS, targets=("IsA",)),
    ADOPTED: dry(
        ADOPTED,
        "discover_mask",
        "sweep_val_wordings_preset",
        "evaluate_robustness",
        "sweep_goals",
        "sweep_select",
        targets=("IsA", "AtLocation", "fruit", "sun", "swimming"),
    ),
}


def test_every_command_has_a_check():
    commands = table_commands()
    assert len(commands) >= 10
    assert set(commands) == set(CHECKS), set(commands) ^ set(CHECKS)


SLOW = {"make bench"}  # a subprocess per (shape, method, dtype); the DVC runs below are marked too


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(c, marks=pytest.mark.slow) if c in SLOW or "dvc repro" in c else c
        for c, check in CHECKS.items()
        if check is not None
    ],
)
def test_readme_command_works(proj, command):
    CHECKS[command](proj)


def test_the_readme_leads_to_dvc_status_not_a_dry_repro():
    """`dvc repro --dry` stops on a fresh clone after the first stage (docs/METHOD.md): the README
    shows `dvc status` for what DVC would run."""
    assert "repro --dry" not in README and "repro -n" not in README
    assert "| see which stages DVC would run | `dvc status` |" in README


def test_the_dag_picture_draws_real_stages_and_edges():
    picture = README.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set()
    for line in picture.splitlines():
        nodes = [n.strip() for n in line.split("-->")]
        edges |= set(zip(nodes, nodes[1:]))
    dot = run([BIN / "snakemake", "--rulegraph", "--forceall", "--quiet", "all"], REPO_ROOT).stdout
    names = dict(re.findall(r'(\d+)\[label = "(\w+)"', dot))
    real = {(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", dot)}
    assert edges and edges <= real, edges - real
    assert {n for e in edges for n in e} == set(names.values()) - {"all"}
