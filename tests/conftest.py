"""Fixtures and helpers shared by the tests.

Layout: `unit/<subpackage>/` tests the library, one folder per subpackage of `src/knowsubnet`;
`workflow/` tests the pipeline definition, the engines and the documented commands. Markers go by
cost: `slow` (over about 5 s on one core) is what `make test-fast` (`-m "not slow"`) leaves out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR = REPO_ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def run_stage(stage: str, argv: list[str]) -> int:
    """`knowsubnet <stage> ARGV` in-process, as the rules call it; its exit code (0, or 2 on bad input)."""
    from knowsubnet.api import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main([stage, *argv])
    return exit_info.value.code


@pytest.fixture
def shared_data_mirror() -> Path:
    """The local data mirror beside the project (../shared/data); tests needing it skip without."""
    mirror = REPO_ROOT.parent / "shared" / "data"
    if not (mirror / "README.md").is_file():
        pytest.skip(f"no local data mirror at {mirror}")
    return mirror


@pytest.fixture
def fresh_relations(monkeypatch):
    """Relations registered from a templates file (data.user_facts) vanish after the test: the
    template tables are module globals."""
    from knowsubnet.data import relations

    for name in ("TEMPLATES", "PARAPHRASES", "VALIDATION_WORDINGS", "_BY_LOWER"):
        monkeypatch.setattr(relations, name, dict(getattr(relations, name)))


@pytest.fixture
def repo_facts_table() -> Path:
    """The in-repo facts table (the 'builtin' source)."""
    return REPO_ROOT / "data" / "facts" / "conceptnet_facts.tsv"


def byte_bpe_tokenizer(corpus: str, vocab_size: int):
    """A byte-level BPE tokenizer built like GPT-2's (and SmolLM2's), trained on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus.splitlines(),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|endoftext|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def one_thread():
    """Toy-sized ops: a second thread only adds synchronisation (and thrashes a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_tiny_gpt2(tokenizer, folder: Path):
    """A 2-block GPT-2 sized to `tokenizer` (seed 0), saved with it as a prepared model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=len(tokenizer),
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def base_params(*overlays: dict):
    """Typed params: config/base.yaml (the one set of defaults) with mapping overlays merged in order."""
    from knowsubnet.core import config

    merged = config.read_yaml(REPO_ROOT / "config" / "base.yaml")
    for overlay in overlays:
        merged = config.deep_merge(merged, overlay)
    return config.from_mapping(merged, REPO_ROOT / "config" / "params.schema.yaml")


def split_choices(**overrides) -> dict:
    """make_splits' ControlKG and held-out choices (controlkg, paper_wordnet_controlkg, holdout) at their
    params `split` defaults (config.Params), with `overrides` in their place."""
    from knowsubnet.core import config

    split = config.Params().split
    choices = dict(
        controlkg=split.controlkg, paper_wordnet_controlkg=split.paper_wordnet_controlkg, holdout=split.holdout
    )
    return {**choices, **overrides}


def mask_logits(layers, frozen=None, **over):
    """samplers.MaskLogits with params `mask` as config/base.yaml sets it (core.sections.Mask), the
    fields in `over` changed (unvalidated, so a test can hand MaskLogits a bad value)."""
    from types import SimpleNamespace

    from knowsubnet.core.sections import Mask
    from knowsubnet.method import samplers

    mask = Mask()
    fields = {name: getattr(mask, name) for name in mask.__dataclass_fields__}
    return samplers.MaskLogits.from_params(layers, SimpleNamespace(**{**fields, **over}), frozen=frozen)


# -- running the workflow engines on a copy of the project ----------------------------------------


def run(cmd, cwd, check=True):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def snakemake_stages(out: str, proj: Path) -> set[str]:
    """The jobs of a Snakemake dry run (`out`), named as their DVC stage instances in proj's dvc.yaml
    (rule@wildcard values, in the order of the stage's matrix)."""
    import re

    stages = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]
    names = set()
    for block in re.split(r"^(?=(?:local)?rule \w+:)", out, flags=re.M):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule or rule.group(1) == "all":
            continue
        found = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", found.group(1))) if found else {}
        order = list(stages[rule.group(1)].get("matrix", {}))
        names.add(rule.group(1) + ("@" + "-".join(wildcards[k] for k in order) if order else ""))
    return names


def project_copy(tmp_path: Path, mirror: bool = True) -> Path:
    """The tracked project files in a fresh git repo (DVC needs one), mirror made absolute."""
    dest = tmp_path / "proj"
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO_ROOT).stdout.split()
    for name in files:
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["mirror"] = str(MIRROR) if mirror else None
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", "--allow-empty"], dest)
    return dest


# -- small data ------------------------------------------------------------------------------------

CORPUS = (
    "A banana is a fruit. An apple is a fruit. A dog is an animal. Cats like to sleep in the sun.\n"
    "Water is made of hydrogen and oxygen. People use a knife for cutting bread.\n"
    "A guitar is an instrument. The sun is hot. Swimming requires water.\n"
) * 30


@pytest.fixture(scope="module")
def gpt2_style():
    """A GPT-2-style byte-level BPE tokenizer trained on CORPUS."""
    return byte_bpe_tokenizer(CORPUS, 400)


# -- an evaluate_ablation-shaped record -----------------------------------------------------------

SETS = ("targetkg", "controlkg", "controllm")


def metrics(model, target, seed, dppl_removed, dppl_random, sparsity=0.98, combination=None):
    """An evaluate_ablation-shaped record with ΔPPL per set (original PPL 10 everywhere)."""

    def variant(delta, acc):
        out = {s: {"ppl": 10.0 + delta[i], "rank": 1.0 + delta[i], "acc": acc} for i, s in enumerate(SETS)}
        out["controllm"] = {"ppl": 10.0 + delta[2]}
        return out

    rec = {
        "model": model,
        "target": target,
        "seed": seed,
        "sparsity": {"masked_layers": sparsity, "all_weights": 1 - (1 - sparsity) / 10},
        "original": variant((0.0, 0.0, 0.0), 0.9),
        "removed": variant(dppl_removed, 0.1),
        "random": variant(dppl_random, 0.85),
        "kept": variant((50.0, 60.0, 70.0), 0.0),
        "random_spread": {s: {"ppl": 0.5} for s in SETS},
        "delta_ppl": {
            "removed": dict(zip(SETS, dppl_removed)),
            "random": dict(zip(SETS, dppl_random)),
            "kept": dict(zip(SETS, (50.0, 60.0, 70.0))),
        },
        "provenance": {"code_version": "0.1.0+gtest", "params": {"eval": {"random_draws": 3}}},
    }
    if combination:
        rec.update(combination=combination, seeds=[0, 1], seed=None)
    return rec


# -- report inputs -----------------------------------------------------------------------------------

REPORT_LAYERS = {
    "transformer.h.1.attn.c_attn": (8, 24),
    "transformer.h.1.attn.c_proj": (8, 8),
    "transformer.h.1.mlp.c_fc": (8, 32),
    "transformer.h.1.mlp.c_proj": (32, 8),
}


def write_report_inputs(root):
    """Metrics of three runs and a seed combination, their masks, train logs and a model folder:
    what the report reads (tests of the report and of its CSQA section)."""
    import json

    import pandas as pd
    import torch

    from knowsubnet.method import masking

    runs = [
        ("m", "A", 0, (100.0, 1.0, 0.5), (2.0, 0.2, 0.1)),
        ("m", "A", 1, (120.0, 3.0, 1.5), (4.0, 0.4, 0.3)),
        ("m", "B", 0, (50.0, 0.5, 0.25), (1.0, 0.1, 0.05)),
    ]
    paths = []
    for model, target, seed, removed, random in runs:
        path = root / "eval" / model / target / f"seed{seed}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(metrics(model, target, seed, removed, random)))
        paths.append(path)
    combo = root / "eval" / "m" / "A" / "combined" / "majority.json"
    combo.parent.mkdir(parents=True)
    combo.write_text(json.dumps(metrics("m", "A", None, (90.0, 2.0, 1.0), (3.0, 0.3, 0.2), combination="majority")))
    paths.append(combo)

    gen = torch.Generator().manual_seed(0)
    mask_paths = []
    for target, seed in (("A", 0), ("A", 1), ("B", 0)):
        logits = {name: torch.randn(shape, generator=gen) - 1.0 for name, shape in REPORT_LAYERS.items()}
        path = root / "masks" / "m" / target / f"seed{seed}" / "mask.safetensors"
        masking.save_mask(path, logits, {"granularity": "weight", "model": "m", "target": target, "seed": seed})
        mask_paths.append(path)
        log = pd.DataFrame(
            {
                "step": [0, 10, 20],
                "loss": [3.0, 2.0, 1.0 + seed],
                "suppress": [1.0, 0.5, 0.2],
                "controlkg": [0.1, 0.1, 0.1],
                "controllm": [0.2, 0.1, 0.1],
                "sparsity_loss": [0.4, 0.3, 0.2],
                "sparsity_weight": [2, 2, 3],
                "lr": [0.1, 0.2, 0.2],
                "density": [0.45, 0.2, 0.05],
            }
        )
        log.to_csv(path.parent / "train_log.csv", index=False)
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "config.json").write_text(json.dumps({"n_head": 2, "n_embd": 8}))
    (root / "models" / "m" / "provenance.json").write_text(
        json.dumps({"model": "m", "source": "tiny", "file_sha256": "abc123", "parameters": 1234})
    )
    return paths, mask_paths, [p.parent / "train_log.csv" for p in mask_paths]


# -- a robustness result by hand (tests of the typed files and of the goal table) --


def ratios(removed=2.0):
    return {
        "removed": {"ratio": removed, "low": 1.5, "high": 2.5, "n_facts": 3},
        "random": {"ratio": 1.0, "low": 0.9, "high": 1.1, "n_facts": 3},
    }


def share(value=0.5):
    return {"share": value, "low": 0.2, "high": 0.8, "n_facts": 4}


def robustness_dict():
    """A small robustness.json as a dict: every part the typed result names (evaluation.robustness_results)."""
    group = {
        "sentences": 6,
        "known_sentences": 4,
        **ratios(),
        "by_template": {"0": 2.0},
        "suppressed_share": {"removed": {**share(), "n_sentences": 4}, "random": share(0.0)},
    }
    relearned = {"ppl_before": 2.0, "ppl_after": 1.5, "ppl_after_per_seed": [1.5]}
    return {
        "model": "m",
        "target": "A",
        "seed": 0,
        "method": "mask",
        "split": None,
        "held_out": {
            "holdout": True,
            "in_sample": ratios(),
            "held_out": ratios(3.0),
            "note": None,
            "controlkg": ratios(1.0),
        },
        "wordings": {
            "threshold": 2.0,
            **{k: group for k in ("train_heldout", "test_heldout", "test_trained", "controlkg_heldout")},
        },
        "in_context": {"3": {"original_ppl": 4.0, **ratios()}},
        "multiple_choice": {
            "targetkg": {v: share() for v in ("original", "removed", "random")},
            "controlkg": {v: share() for v in ("original", "removed", "random")},
            "candidates_per_fact": 4.0,
        },
        "readouts": {"lens": {"1": {"original_ppl": 3.0, "removed": 2.0, "random": 1.0}}, "linear_probe": None},
        "quantized": {
            "none": {
                "ppl": {"original": {"targetkg": 3.0}, "removed": {"targetkg": 6.0}, "random": {"targetkg": 3.0}},
                "ratio": {"removed": {"targetkg": 2.0}, "random": {"targetkg": 1.0}},
                "rounding": None,
            }
        },
        "relearning": {
            "points": [
                {
                    "scope": "masked",
                    "lr": 0.01,
                    "steps": 3,
                    "data": {
                        "targetkg": {
                            "n_train": 4,
                            "n_scored": 3,
                            "wall_time_s": 0.5,
                            "original": relearned,
                            "removed_held": {
                                **relearned,
                                "recovered": None,
                                "low": None,
                                "high": None,
                                "per_seed": [None],
                            },
                        },
                        "wikitext": None,
                    },
                }
            ]
        },
        "specificity": {
            "true_facts": ratios(),
            "false_tails": ratios(),
            "foreign_heads": ratios(),
            "same_head_other_facts": ratios(),
            "other_targets": {"B": ratios(1.0)},
        },
        "controlkg_kl": {"removed": 0.01, "random": 0.001},
        "counts": {"targetkg_test": {"sentences": 3, "facts": 3}},
        "random_draws": 2,
    }
