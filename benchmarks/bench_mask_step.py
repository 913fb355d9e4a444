"""Time a mask-discovery step against its floor and a plain finetuning step, in fp32 and bf16.

    python benchmarks/bench_mask_step.py                  # one thread, both dtypes, GPT-2 small and SmolLM2 shapes
    python benchmarks/bench_mask_step.py --only tiny --threads 2
    python benchmarks/bench_mask_step.py --paper --device cuda --steps 20

Model shapes (random weights: the step time depends on the shape, not the values):
- gpt2-small:   12 blocks x 768, vocab 50257, top 6 blocks masked (the paper's GPT-2 small);
- smollm2-135m: SmolLM2-135M's Llama shape, 30 blocks x 576, vocab 49152, top 6 masked (the demo);
- tiny:         the tiny preset's model (results/models/tiny-gpt2 when built, else its shape).

mask step:     `MaskTrainer.step()` at train.dtype (prefix cached at setup, excluded from the time):
               sample masks, three losses on the remaining model, sparsity, backward, Adam on logits.
floor:         the least any method that changes the masked blocks must do per step, in the same
               dtype: one forward and backward through the masked blocks alone (`TopBlocks`, from the
               same cached inputs, bf16 weight copies in bf16), cross-entropy at the same fact tail
               positions and ControlLM blocks, gradients into the masked weights; no mask, no
               reference, no optimizer. mask step / floor is what the mask's own work costs.
finetune step: AdamW on every weight, next-token loss on the same sentences and ControlLM blocks,
               full forward and backward (bf16: autocast, as a plain training script would).

Every (shape, method, dtype) runs in a fresh process, so peak memory is clean: peak resident memory
above the process's baseline (CPU, Linux VmHWM), or torch.cuda.max_memory_allocated (CUDA).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from shapes import SMOLLM2_135M  # noqa: E402  (benchmarks/shapes.py, beside this script)

PAPER = {"batch_targetkg": 250, "batch_controlkg": 250, "batch_controllm": 10, "block_size": 512}
PAPER_STEPS = 40_000


# -- memory -------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:  # Linux >= 4.0: writing 5 resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# -- workload -------------------------------------------------------------------------------------


def make_model(shape: str, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    tiny_dir = ROOT / "results" / "models" / "tiny-gpt2"
    spec, tiny_top_k = tiny_preset()
    if shape == "tiny" and (tiny_dir / "config.json").is_file():
        return (
            AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
            tiny_top_k,
            "results/models/tiny-gpt2",
        )
    torch.manual_seed(seed)
    if shape == "tiny":
        cfg = GPT2Config(
            n_layer=spec["n_layer"],
            n_embd=spec["n_embd"],
            n_head=spec["n_head"],
            vocab_size=spec["vocab_size"],
            n_positions=spec["n_positions"],
            bos_token_id=0,
            eos_token_id=0,
        )  # GPT-2's ids (50256) are outside this vocabulary
        top_k = tiny_top_k
        label = f"random GPT-2, tiny preset shape ({spec['n_layer']} x {spec['n_embd']}, vocab {spec['vocab_size']})"
    elif shape == "smollm2-135m":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(**SMOLLM2_135M, rms_norm_eps=1e-5, rope_theta=100000.0, bos_token_id=0, eos_token_id=0)
        return LlamaForCausalLM(cfg), 6, "random SmolLM2-135M shape (30 x 576, vocab 49152)"
    else:
        cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
        top_k, label = 6, "random GPT-2 small shape (12 x 768, vocab 50257)"
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    return GPT2LMHeadModel(cfg), top_k, label


def tiny_preset() -> tuple[dict, int]:
    """The tiny model's shape and top_k from params.yaml (fallback: knowsubnet.tiny defaults, k = 4)."""
    spec = {"n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": 4096, "n_positions": 128}
    top_k = 4
    try:
        import yaml

        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        spec.update({k: v for k, v in params["models"]["tiny-gpt2"].items() if k in spec})
        top_k = int(params["mask"]["top_k_blocks"])
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return spec, min(top_k, spec["n_layer"])


def make_data(vocab: int, n_positions: int, args, seed: int = 0):
    """Random facts (prompt 5-12 tokens, tail 1-2 tokens, right-padded) and ControlLM blocks."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def facts(n):
        width = 13
        input_ids = torch.zeros(n, width, dtype=torch.long)
        targets = torch.full((n, width), -100)
        for i in range(n):
            prompt = int(torch.randint(5, 13, (1,), generator=gen))
            tail = int(torch.randint(1, 3, (1,), generator=gen))
            seq = torch.randint(1, vocab, (prompt + tail,), generator=gen)
            input_ids[i, : prompt + tail - 1] = seq[:-1]
            targets[i, prompt - 1 : prompt + tail - 1] = seq[prompt:]
        return SimpleNamespace(input_ids=input_ids, targets=targets)

    block = min(args.block_size, n_positions or args.block_size)
    blocks = torch.randint(1, vocab, (args.batch_controllm, block), generator=gen)
    return facts(args.batch_targetkg), facts(args.batch_controlkg), blocks


def worker(shape: str, method: str, dtype: str, args, queue) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bf16 = dtype == "bfloat16"
    from transformers import GPT2Config, GPT2LMHeadModel

    from knowsubnet.method import training  # noqa: F401

    # Warm the libraries (lazily loaded kernels count as resident memory) before the baseline.
    warm = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
    )
    warm(input_ids=torch.ones(2, 8, dtype=torch.long)).logits.sum().backward()
    torch.optim.AdamW(warm.parameters()).step()
    del warm
    base_rss = _status_kib("VmRSS")
    model, top_k, label = make_model(shape)
    target, control, blocks = make_data(model.config.vocab_size, getattr(model.config, "n_positions", None), args)
    model.to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)

    setup_s = 0.0
    if method == "mask":
        import dataclasses

        from knowsubnet.core import config
        from knowsubnet.method.training import MaskTrainer

        # the base params (config/base.yaml) with the benchmark's sizes
        base = config.load([ROOT / "config" / "base.yaml"], ROOT / "config" / "params.schema.yaml")
        cfg = dataclasses.replace(
            base.train,
            steps=10**6,
            device=str(device),
            dtype=dtype,
            log_every=10**6,
            checkpoint_every=10**6,
            batch=config.Batch(args.batch_targetkg, args.batch_controlkg, args.batch_controllm),
        )
        start = time.perf_counter()
        trainer = MaskTrainer(
            model,
            target,
            control,
            blocks,
            dataclasses.replace(base.mask, top_k_blocks=top_k),
            cfg,
            seed=0,
            progress=False,
        )
        setup_s = time.perf_counter() - start
        step = trainer.step
    elif method == "floor":
        from knowsubnet.method.masking import find_maskable_layers
        from knowsubnet.models.top_blocks import TopBlocks

        layers = find_maskable_layers(model, top_k)
        model.eval().requires_grad_(False)
        top = TopBlocks(model, min(layer.block for layer in layers), getattr(torch, dtype))
        # the masked weights as leaves in the compute dtype: their gradient is what a method needs
        weights = {layer.name: top.weight(layer.name).detach().clone().requires_grad_(True) for layer in layers}
        start = time.perf_counter()
        ids = torch.cat([target.input_ids, control.input_ids]).to(device)
        kg_targets = torch.cat([target.targets, control.targets]).to(device)
        kg_hidden, lm_hidden = top.prefix(ids), top.prefix(blocks[:, :-1].to(device))
        lm_targets = blocks[:, 1:].to(device)
        setup_s = time.perf_counter() - start
        scored = kg_targets != -100

        def step():
            kg_logits = top.logits(top.forward(kg_hidden, weights)[scored])
            lm_logits = top.logits(top.forward(lm_hidden, weights))
            loss = F.cross_entropy(kg_logits.float(), kg_targets[scored]) + F.cross_entropy(
                lm_logits.float().flatten(0, 1), lm_targets.flatten()
            )
            for weight in weights.values():
                weight.grad = None
            loss.backward()
            return loss.item()
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        pad = torch.cat([target.input_ids, control.input_ids]).to(device)
        kg_targets = torch.cat([target.targets, control.targets]).to(device)
        # ordinary LM loss on every real token of the sentences (labels = inputs, padding ignored)
        lengths = torch.where(kg_targets != -100, torch.arange(pad.shape[1], device=device) + 1, 0).amax(1)
        labels = torch.where(torch.arange(pad.shape[1], device=device)[None] < lengths[:, None], pad, -100)
        lm_blocks = blocks.to(device)

        def lm_loss(ids, labels):  # next-token CE, as `labels=` would compute it
            logits = model(input_ids=ids).logits[:, :-1].float()
            return F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = lm_loss(pad, labels) + lm_loss(lm_blocks, lm_blocks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.item()

    step()  # warm-up (allocator, kernels); not timed
    if cuda:
        torch.cuda.synchronize(device)
    _reset_peak()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
        peak_kind = "CUDA max_memory_allocated above the loaded model"
    else:
        peak_mib = (_status_kib("VmHWM") - base_rss) / 1024
        peak_kind = "peak RSS above the process baseline (model included)"
    n_params = sum(p.numel() for p in model.parameters())
    queue.put(
        {
            "label": label,
            "top_k": top_k,
            "params": n_params,
            "steps_per_s": args.steps / elapsed,
            "step_s": elapsed / args.steps,
            "setup_s": setup_s,
            "peak_mib": peak_mib,
            "peak_kind": peak_kind,
        }
    )


def measure(shape: str, method: str, dtype: str, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(shape, method, dtype, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


METHODS = ("mask", "floor", "finetune")
ROWS = (
    ("mask", "mask step"),
    ("floor", "floor (masked blocks, fwd + bwd)"),
    ("finetune", "finetune step (AdamW, all)"),
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--batch-targetkg", type=int, default=32)
    parser.add_argument("--batch-controlkg", type=int, default=32)
    parser.add_argument("--batch-controllm", type=int, default=2)
    parser.add_argument(
        "--block-size", type=int, default=256, help="ControlLM tokens per block (capped at the model's positions)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up step)")
    parser.add_argument("--paper", action="store_true", help="the paper's batches: 250 / 250 / 10 x 512")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes to time (comma-separated)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the goals are on one)")
    parser.add_argument("--only", choices=("tiny", "gpt2-small", "smollm2-135m"), help="one model shape only")
    args = parser.parse_args(argv)
    if args.paper:
        for key, value in PAPER.items():
            setattr(args, key, value)
    import torch

    from knowsubnet.core.provenance import cpu_bf16_flags

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    native = cpu_bf16_flags()
    print(
        f"device {args.device}; CPU native bf16 flags: "
        f"{', '.join(native) or 'none (bf16 is emulated: train.dtype auto picks float32)'}; "
        f"torch {torch.__version__}; threads {args.threads}"
    )
    print(
        f"batches TargetKG {args.batch_targetkg}, ControlKG {args.batch_controlkg}, ControlLM "
        f"{args.batch_controllm} x {args.block_size} tokens; {args.steps} timed steps after one warm-up; "
        f"each figure from its own process",
        flush=True,
    )
    shapes = [args.only] if args.only else ["gpt2-small", "smollm2-135m"]
    for shape in shapes:
        times = {(m, d): measure(shape, m, d, args) for d in dtypes for m in METHODS}
        first = times[METHODS[0], dtypes[0]]
        print(
            f"\n[{shape}] {first['label']}, {first['params'] / 1e6:.1f}M parameters, top {first['top_k']} blocks masked"
        )
        head = " | ".join(f"{d} s/step | {d} peak MiB" for d in dtypes)
        speed = " | speed-up" if len(dtypes) == 2 else ""
        print(f"| step | {head}{speed} |")
        print("| --- " * (1 + 2 * len(dtypes) + bool(speed)) + "|")
        for method, label in ROWS:
            cells = " | ".join(f"{times[method, d]['step_s']:.3f} | {times[method, d]['peak_mib']:.0f}" for d in dtypes)
            ratio = (
                f" | x{times[method, dtypes[0]]['step_s'] / times[method, dtypes[1]]['step_s']:.2f}" if speed else ""
            )
            print(f"| {label} | {cells}{ratio} |")
        ratios = {d: times["mask", d]["step_s"] / times["floor", d]["step_s"] for d in dtypes}
        cells = " | ".join(f"{ratios[d]:.2f} | " for d in dtypes)
        print(f"| mask / floor | {cells}{' |' if speed else ''}")
        for d in dtypes:
            print(
                f"  {d}: mask / floor {ratios[d]:.2f} ({'meets' if ratios[d] <= 1.2 else 'misses'} the goal <= 1.2); "
                f"mask / finetune {times['mask', d]['step_s'] / times['finetune', d]['step_s']:.2f}; "
                f"mask setup (prefix + reference caches) {times['mask', d]['setup_s']:.2f} s"
            )
        if shape == "gpt2-small" and "bfloat16" in dtypes and args.threads == 1 and not args.paper:
            step_s = times["mask", "bfloat16"]["step_s"]
            print(
                f"  bf16 mask step {step_s:.2f} s ({'meets' if step_s <= 1.0 else 'misses'} the goal <= 1.0 s on one "
                f"thread)"
            )
        if args.paper:
            hours = PAPER_STEPS * times["mask", dtypes[-1]]["step_s"] / 3600
            print(f"  projected {PAPER_STEPS:,}-step mask run in {dtypes[-1]}: {hours:.1f} h (setup excluded)")
        print(f"  memory: {first['peak_kind']}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
