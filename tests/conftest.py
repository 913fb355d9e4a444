"""Fixtures and helpers shared by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests load stage scripts from their files; the scripts import their sibling `stage_params`.
sys.path.insert(0, str(REPO_ROOT / "workflow" / "scripts"))


@pytest.fixture
def shared_data_mirror() -> Path:
    """The local data mirror beside the project (../shared/data); tests needing it skip without."""
    mirror = REPO_ROOT.parent / "shared" / "data"
    if not (mirror / "README.md").is_file():
        pytest.skip(f"no local data mirror at {mirror}")
    return mirror


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
    tok.train_from_iterator(corpus.splitlines(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def one_thread():
    """Toy-sized ops: a second thread only adds synchronisation (and thrashes a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def base_params(*overlays: dict):
    """Typed params: config/base.yaml (the one set of defaults) with mapping overlays merged in order."""
    from knowsubnet.core import config

    merged = config.read_yaml(REPO_ROOT / "config" / "base.yaml")
    for overlay in overlays:
        merged = config.deep_merge(merged, overlay)
    return config.from_mapping(merged, REPO_ROOT / "config" / "params.schema.yaml")
