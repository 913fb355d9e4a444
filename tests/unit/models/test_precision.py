"""The compute dtype: auto follows the hardware, bf16 keeps what must stay fp32, fp32 is untouched."""

from types import SimpleNamespace

import pytest
import torch
from conftest import mask_logits
from transformers import GPT2Config, GPT2LMHeadModel

from knowsubnet.core.errors import InputError
from knowsubnet.method import masking
from knowsubnet.models import precision
from knowsubnet.models.top_blocks import TopBlocks

CPU = torch.device("cpu")


def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=3,
        n_embd=32,
        n_head=4,
        vocab_size=97,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize(
    "flags,expected",
    [([], torch.float32), (["avx512_bf16"], torch.bfloat16), (["amx_bf16", "avx512_bf16"], torch.bfloat16)],
)
def test_auto_is_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    assert precision.resolve("auto", CPU) == expected
    # an explicit choice is taken as asked, whatever the CPU
    assert precision.resolve("float32", CPU) == torch.float32
    assert precision.resolve("bfloat16", CPU) == torch.bfloat16


def test_a_wrong_dtype_names_its_key_and_the_choices():
    with pytest.raises(InputError, match=r"params key 'train.dtype' = 'half': expected one of auto, float32, bfloat16"):
        precision.resolve("half", CPU, key="train.dtype")


def facts(n, seed):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 97, (n, 8), generator=gen)
    targets = torch.full((n, 8), -100)
    targets[:, 5:7] = input_ids[:, 6:8]
    return SimpleNamespace(input_ids=input_ids, targets=targets)


@pytest.mark.parametrize("flags,expected", [([], torch.float32), (["amx_bf16"], torch.bfloat16)])
def test_the_trainer_follows_the_cpu(monkeypatch, flags, expected):
    from conftest import base_params

    from knowsubnet.method.training import MaskTrainer

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    params = base_params(
        {
            "mask": {"top_k_blocks": 2},
            "train": {
                "steps": 2,
                "device": "cpu",
                "dtype": "auto",
                "batch": {"targetkg": 4, "controlkg": 4, "controllm": 2},
            },
        }
    )
    lm = torch.randint(1, 97, (3, 12), generator=torch.Generator().manual_seed(2))
    trainer = MaskTrainer(gpt2(), facts(6, 0), facts(6, 1), lm, params.mask, params.train, seed=0, progress=False)
    trainer.step()
    assert trainer.dtype == expected
    if expected == torch.bfloat16:
        assert all(trainer.mask.frozen[layer.name].dtype == torch.bfloat16 for layer in trainer.layers)
        return
    assert trainer.top.compute_weights == {}  # a CPU without bf16: fp32, on the model's own weights
    assert all(trainer.mask.frozen[layer.name] is layer.weight for layer in trainer.layers)


def test_bf16_top_blocks_keep_copies_norms_in_fp32_and_agree_with_fp32():
    model = gpt2()
    ids = torch.randint(1, 97, (4, 10), generator=torch.Generator().manual_seed(0))
    fp32, bf16 = TopBlocks(model, 1), TopBlocks(model, 1, torch.bfloat16)
    # every matrix of the top blocks and the head, once, in bf16; the model itself stays fp32
    assert {k.split(".", 2)[-1] for k in bf16.compute_weights} == {
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    }
    assert all(w.dtype == torch.bfloat16 for w in bf16.compute_weights.values())
    assert bf16.head_weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        hidden = fp32.prefix(ids)
        want = fp32.logits(fp32.forward(hidden)).float()
        got = bf16.logits(bf16.forward(hidden)).float()
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # bf16 rounding, not another function


def test_a_bf16_mask_step_gives_fp32_logit_gradients_from_bf16_weights():
    model = gpt2()
    layers = masking.find_maskable_layers(model, 2)
    top = TopBlocks(model, min(layer.block for layer in layers), torch.bfloat16)
    mask = mask_logits(layers, init_prob=0.3, frozen={layer.name: top.weight(layer.name) for layer in layers})
    weights = mask.effective_weights(torch.Generator().manual_seed(0))
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    hidden = top.prefix(torch.randint(1, 97, (2, 6), generator=torch.Generator().manual_seed(1)))
    top.logits(top.forward(hidden, weights)).float().logsumexp(-1).sum().backward()
    for value in mask.parameters():
        assert value.dtype == torch.float32 and value.grad.dtype == torch.float32 and value.grad.abs().sum() > 0
    # the deterministic mask in bf16 zeroes exactly the weights apply_mask zeroes
    binary = masking.binary_masks(mask.state_dict())
    det = mask.effective_weights(deterministic=True)
    want = masking.apply_mask(layers, binary, "weight")
    for layer in layers:
        assert torch.equal(det[layer.name] == 0, want[layer.name].to(torch.bfloat16) == 0)
