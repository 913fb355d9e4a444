"""encoding: tail boundaries for byte-level BPE and SentencePiece-style tokenizers, errors, ControlLM blocks."""

from __future__ import annotations

import pytest
import torch
from conftest import CORPUS

from knowsubnet.core.errors import InputError
from knowsubnet.data.encoding import FactSet, controllm_blocks, encode_facts, load_blocks, save_blocks


def _sentencepiece_style(legacy: bool):
    """A Llama-style BPE over '▁'-marked words with byte fallback.

    legacy=True: the Llama-2 fast tokenizer's pipeline (normalizer prepends '▁' to every text and
    turns spaces into '▁'): a tail tokenised on its own gets a stray leading '▁'.
    legacy=False: a Metaspace pre-tokenizer that prepends '▁' only to the first word.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.train_from_iterator(
        CORPUS.splitlines(),
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False, initial_alphabet=list("▁")
        ),
    )
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "metaspace"])
def llama_style(request):
    return _sentencepiece_style(request.param)


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_gpt2_style_boundary_and_layout(gpt2_style):
    tok = gpt2_style
    prompts, tails = ["A banana is a", "A dog is an"], [" fruit", " xylophonist"]
    fs = encode_facts(tok, prompts, tails, ["u1", "u2"], scored_positions="all_tail_tokens")
    assert isinstance(fs, FactSet) and fs.uuids == ["u1", "u2"] and len(fs) == 2
    for i, (prompt, tail) in enumerate(zip(prompts, tails)):
        p, t = _ids(tok, prompt), _ids(tok, tail)
        assert p + t == _ids(tok, prompt + tail)  # separate tokenisation is exact for byte-level BPE
        n = len(p) + len(t) - 1
        assert fs.input_ids[i, :n].tolist() == (p + t)[:-1]
        assert fs.targets[i, : len(p) - 1].tolist() == [-100] * (len(p) - 1)
        assert fs.targets[i, len(p) - 1 : n].tolist() == t  # every tail token, in order
        assert (fs.targets[i, n:] == -100).all() and (fs.input_ids[i, n:] == tok.pad_token_id).all()
    assert len(_ids(tok, " xylophonist")) > 1  # the multi-token tail keeps all its tokens
    assert fs.tail_lengths.tolist() == [len(_ids(tok, t)) for t in tails]
    assert fs.input_ids.dtype == torch.long and fs.input_ids.shape == fs.targets.shape


def test_sentencepiece_style_boundary(llama_style):
    tok = llama_style
    prompt, tail = "A banana is a", " fruit"
    fs = encode_facts(tok, [prompt], [tail], ["u1"], scored_positions="all_tail_tokens")
    full, p = _ids(tok, prompt + tail), _ids(tok, prompt)
    assert full[: len(p)] == p
    tail_ids = fs.targets[0][fs.targets[0] != -100].tolist()
    assert tail_ids == full[len(p) :]  # exactly the sentence's tokens after the prompt
    assert tok.convert_ids_to_tokens(tail_ids)[0].startswith("▁")
    assert tok.convert_ids_to_tokens(tail_ids) != ["▁"] and tok.convert_ids_to_tokens(tail_ids)[0] != "▁"
    assert fs.input_ids[0, : len(full) - 1].tolist() == full[:-1]


def test_legacy_sentencepiece_separate_tail_would_be_wrong():
    # Why encode_facts takes the tail from the whole sentence: on its own, " fruit" gets a stray '▁'.
    tok = _sentencepiece_style(legacy=True)
    alone = tok.convert_ids_to_tokens(_ids(tok, " fruit"))
    in_sentence = tok.convert_ids_to_tokens(_ids(tok, "A banana is a fruit"))
    n_prompt = len(_ids(tok, "A banana is a"))
    assert alone[0] == "▁" and alone[1:] == in_sentence[n_prompt:]
    fs = encode_facts(tok, ["A banana is a"], [" fruit"], scored_positions="all_tail_tokens")
    assert tok.convert_ids_to_tokens(fs.targets[0][fs.targets[0] != -100].tolist()) == in_sentence[n_prompt:]


def test_errors_name_the_fact(gpt2_style, llama_style):
    for tok in (gpt2_style, llama_style):
        with pytest.raises(InputError, match=r"fact abc123: the tail '' tokenises to zero tokens"):
            encode_facts(
                tok,
                ["A banana is a", "A dog is an"],
                [" fruit", ""],
                ["ok", "abc123"],
                scored_positions="all_tail_tokens",
            )
        with pytest.raises(InputError, match=r"fact p0: the prompt '' tokenises to zero tokens"):
            encode_facts(tok, [""], [" fruit"], ["p0"], scored_positions="all_tail_tokens")
    with pytest.raises(InputError, match=r"fact long1: .* longer than the model's context of 8 tokens"):
        encode_facts(
            gpt2_style,
            ["A dog is an animal and a banana is a fruit and a"],
            [" fruit"],
            ["long1"],
            max_length=8,
            scored_positions="all_tail_tokens",
        )
    fs = encode_facts(
        gpt2_style,
        ["A dog is an"],
        [" animal"],
        ["fits"],
        max_length=len(_ids(gpt2_style, "A dog is an animal")) - 1,
        scored_positions="all_tail_tokens",
    )
    assert len(fs) == 1


def test_subset_trims_padding(gpt2_style):
    fs = encode_facts(
        gpt2_style,
        ["A", "A dog is an animal and a banana is a"],
        [" dog", " fruit"],
        ["s", "l"],
        scored_positions="all_tail_tokens",
    )
    sub = fs.subset([0])
    assert sub.uuids == ["s"] and sub.input_ids.shape[1] == int(fs.lengths[0])
    assert sub.targets[0].tolist() == fs.targets[0, : sub.input_ids.shape[1]].tolist()


def test_controllm_blocks(gpt2_style, tmp_path):
    text = CORPUS * 3
    blocks = controllm_blocks(gpt2_style, text, 16)
    assert blocks.dtype == torch.long and blocks.shape[1] == 16
    lines = text.splitlines(keepends=True)
    expected = []
    for i in range(0, len(lines), 64):
        expected += _ids(gpt2_style, "".join(lines[i : i + 64]))
    assert blocks.shape[0] == len(expected) // 16  # the remainder is dropped
    assert blocks.flatten().tolist() == expected[: blocks.numel()]
    assert gpt2_style.eos_token_id not in blocks.flatten().tolist()  # no special tokens
    assert torch.equal(controllm_blocks(gpt2_style, text, 16), blocks)  # deterministic
    assert torch.equal(controllm_blocks(gpt2_style, text, 16, max_blocks=3), blocks[:3])

    path = tmp_path / "controllm" / "train.safetensors"
    save_blocks(path, blocks, {"block_size": 16})
    assert torch.equal(load_blocks(path), blocks)
    assert [p.name for p in path.parent.iterdir()] == ["train.safetensors"]

    with pytest.raises(InputError, match="fewer than one block"):
        controllm_blocks(gpt2_style, "A dog.", 64)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="bad.safetensors"):
        load_blocks(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="no such ControlLM blocks file"):
        load_blocks(tmp_path / "missing.safetensors")


def test_last_token_scores_only_the_last_tail_token(gpt2_style):
    tok = gpt2_style
    prompts, tails = ["A banana is a", "A dog is an"], [" fruit", " xylophonist"]
    every = encode_facts(tok, prompts, tails, scored_positions="all_tail_tokens")
    last = encode_facts(tok, prompts, tails, scored_positions="last_token")
    assert torch.equal(every.input_ids, last.input_ids)  # the model reads the same sentence
    assert last.tail_lengths.tolist() == [1, 1] and every.tail_lengths[1] > 1
    for i in range(2):
        end = int(every.lengths[i]) - 1
        assert last.targets[i, end] == every.targets[i, end]  # the last tail token, same position
        assert (last.targets[i, :end] == -100).all()
    with pytest.raises(InputError, match="scored_positions"):
        encode_facts(tok, prompts, tails, scored_positions="first_token")


def test_text_head_keeps_the_first_share_of_lines():
    from knowsubnet.data.encoding import text_head

    text = "".join(f"line {i}\n" for i in range(10))
    assert text_head(text, 1.0) == text
    assert text_head(text, 0.2) == "line 0\nline 1\n"
    assert text_head(text, 0.01) == "line 0\n"  # at least one line
    with pytest.raises(InputError, match="controllm.test_fraction"):
        text_head(text, 0)
