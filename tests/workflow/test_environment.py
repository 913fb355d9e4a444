"""The software environment: requirements.lock pins every dependency pyproject.toml names (torch
aside: TORCH_SPEC installs it), and the conda env, the Containerfile and the Apptainer definition
install the same torch, the lock and the project, as `make setup` does."""

import re

import pytest
import yaml
from conftest import REPO_ROOT
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

LOCK = REPO_ROOT / "requirements.lock"
CONDA_ENV = REPO_ROOT / "workflow" / "envs" / "knowsubnet.yaml"
CONTAINERFILE = REPO_ROOT / "Containerfile"
APPTAINER = REPO_ROOT / "workflow" / "envs" / "knowsubnet.def"
MAKEFILE = REPO_ROOT / "Makefile"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"workflow", "dev"} <= set(extras)
    return [Requirement(r) for r in project["dependencies"] + extras["workflow"] + extras["dev"]]


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line.strip())
        assert match, f"requirements.lock: {line!r} is not NAME==VERSION"
        name = normalized(match[1])
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = match[2]
    return pins


def makefile_torch() -> str:
    match = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", MAKEFILE.read_text(), re.M)
    assert match, "Makefile: no `TORCH_SPEC ?= torch==X` default"
    return match[1]


def test_lock_pins_every_declared_dependency_within_its_range():
    pins = locked()
    for req in declared():
        name = normalized(req.name)
        if name == "torch":
            continue
        assert name in pins, f"requirements.lock has no pin for {req.name} (pyproject.toml): run `make lock`"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {req}"
        )


def test_lock_leaves_torch_and_the_project_to_make_setup():
    pins = locked()
    assert "torch" not in pins  # TORCH_SPEC installs it (CPU or CUDA wheel)
    assert "knowsubnet" not in pins
    assert not [line for line in LOCK.read_text().splitlines() if line.startswith(("-e", "--"))]
    torch = next(r for r in declared() if normalized(r.name) == "torch")
    assert torch.specifier.contains(Version(makefile_torch()))


def test_make_setup_installs_torch_then_the_lock_then_the_project():
    recipe = MAKEFILE.read_text().split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    steps = [line.strip() for line in recipe.splitlines()[1:] if "pip install" in line]
    assert [s.split("--quiet", 1)[1].strip() for s in steps if "--upgrade pip" not in s] == [
        "$(TORCH_SPEC)",
        "-r requirements.lock",
        "--no-deps -e .",
    ]  # TORCH_SPEC unquoted: options pass


def test_conda_env_installs_python_torch_the_lock_and_the_project():
    env = yaml.safe_load(CONDA_ENV.read_text())
    assert env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    assert "pip" in deps and "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert f"torch=={makefile_torch()}" in pip
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip
    # conda runs pip in the env file's folder: workflow/envs/, or .snakemake/conda/ under Snakemake
    assert "-r ../../requirements.lock" in pip and "-e ../.." in pip
    for folder in (CONDA_ENV.parent, REPO_ROOT / ".snakemake" / "conda"):
        assert (folder / "../../requirements.lock").resolve() == LOCK
        assert (folder / "../..").resolve() == REPO_ROOT
    assert pip.index(f"torch=={makefile_torch()}") < pip.index("-r ../../requirements.lock")


def test_every_rule_names_the_conda_env():
    """`snakemake --sdm conda` (and `snakemake --lint`) want a `conda:` on every rule that runs a command."""
    for path in sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^(?=(?:rule|localrule|checkpoint) [\w-]+:)", path.read_text(), flags=re.M)[1:]
        for block in blocks:
            if not re.search(r"^    (shell|script|run):", block, re.M):
                continue
            conda = re.search(r"^    conda:\s*\n\s*\"([^\"]+)\"", block, re.M)
            assert conda, f"{path.name}: {block.splitlines()[0]} has no conda: directive"
            assert (path.parent / conda[1]).resolve() == CONDA_ENV, f"{path.name}: conda: {conda[1]}"


@pytest.mark.parametrize("path", [CONTAINERFILE, APPTAINER], ids=lambda p: p.name)
def test_containers_install_torch_the_lock_and_the_project_as_make_setup(path):
    text = path.read_text()
    assert re.search(r"^(FROM|From:) python:3\.11-slim$", text, re.M)
    default = re.search(r'^\s*(?:ARG )?TORCH_SPEC="([^"]+)"$', text, re.M)  # ARG / %arguments
    assert default and default[1] == f"torch=={makefile_torch()} --index-url https://download.pytorch.org/whl/cpu"
    torch_at = text.index("pip install ${TORCH_SPEC}" if path == CONTAINERFILE else "pip install {{ TORCH_SPEC }}")
    lock_at = re.search(r"pip install -r \S*requirements\.lock", text).start()
    project_at = text.index("pip install --no-deps -e .")
    assert torch_at < lock_at < project_at


def test_containerfile_copies_the_lock_before_the_code():
    text = CONTAINERFILE.read_text()
    assert (
        text.index("COPY pyproject.toml requirements.lock ./")
        < text.index("pip install -r requirements.lock")
        < text.index("COPY . .")
    )
    assert "WORKDIR /knowsubnet" in text
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and "results/" in ignored  # the build context leaves them out
