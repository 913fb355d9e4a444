"""Time one mask-discovery step against one plain full-finetuning step on the same tokens.

    python benchmarks/bench_mask_step.py                 # CPU-sized defaults, a couple of minutes
    python benchmarks/bench_mask_step.py --paper --device cuda --steps 20

Two model shapes: (a) the tiny preset's (results/models/tiny-gpt2 when it exists, else a random
GPT-2 of the shape params.yaml gives it), masked as params.yaml's mask.top_k_blocks says (tiny:
all 4 blocks); (b) a GPT-2-small-shaped model (12 blocks, 768, 12 heads, vocab 50257) with random
weights, top 6 blocks masked.

mask step:     `MaskTrainer.step()` (prefix cached at setup, excluded from the step time): sample
               masks, three losses on the remaining model, sparsity, backward, Adam on the logits.
grouped step:  the mask step with train.group_by_length (facts run in groups of similar length,
               not all padded to the longest), against the padded mask step.
finetune step: AdamW on every weight, ordinary next-token loss on the same batches (the TargetKG
               and ControlKG sentences and the ControlLM blocks), full forward and backward.
floor:         the least any method that changes the masked blocks must do per step: one forward
               and backward through the masked blocks alone (`TopBlocks`, from the same cached
               inputs as the mask step), cross-entropy at the same fact tail positions and on the
               same ControlLM blocks, gradients into the masked weights; no mask, no reference
               forward, no optimizer. The mask step / floor ratio is what the mask work costs.

Each (model, method) runs in a fresh process, so the peak memory figures are clean: peak resident
memory above the process's baseline before the model was built (CPU, Linux VmHWM), or
torch.cuda.max_memory_allocated (CUDA).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

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
        return (AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), tiny_top_k,
                "results/models/tiny-gpt2")
    torch.manual_seed(seed)
    if shape == "tiny":
        cfg = GPT2Config(n_layer=spec["n_layer"], n_embd=spec["n_embd"], n_head=spec["n_head"],
                         vocab_size=spec["vocab_size"], n_positions=spec["n_positions"], bos_token_id=0,
                         eos_token_id=0)  # GPT-2's ids (50256) are outside this vocabulary
        top_k = tiny_top_k
        label = (f"random GPT-2, tiny preset shape ({spec['n_layer']} x {spec['n_embd']}, "
                 f"vocab {spec['vocab_size']})")
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
            input_ids[i, :prompt + tail - 1] = seq[:-1]
            targets[i, prompt - 1:prompt + tail - 1] = seq[prompt:]
        return SimpleNamespace(input_ids=input_ids, targets=targets)

    block = min(args.block_size, n_positions)
    blocks = torch.randint(1, vocab, (args.batch_controllm, block), generator=gen)
    return facts(args.batch_targetkg), facts(args.batch_controlkg), blocks


def worker(shape: str, method: str, args, queue) -> None:
    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    from transformers import GPT2Config, GPT2LMHeadModel

    from knowsubnet.method import training  # noqa: F401

    # Warm the libraries (lazily loaded kernels count as resident memory) before the baseline.
    warm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))
    warm(input_ids=torch.ones(2, 8, dtype=torch.long)).logits.sum().backward()
    torch.optim.AdamW(warm.parameters()).step()
    del warm
    base_rss = _status_kib("VmRSS")
    model, top_k, label = make_model(shape)
    target, control, blocks = make_data(model.config.vocab_size, model.config.n_positions, args)
    model.to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)

    setup_s = 0.0
    if method in ("mask", "mask-grouped"):
        import dataclasses

        from knowsubnet.core import config
        from knowsubnet.method.training import MaskTrainer

        # the base params (config/base.yaml) with the benchmark's sizes
        base = config.load([ROOT / "config" / "base.yaml"], ROOT / "config" / "params.schema.yaml")
        cfg = dataclasses.replace(
            base.train, steps=10 ** 6, device=str(device), bf16=args.bf16, log_every=10 ** 6, checkpoint_every=10 ** 6,
            batch=config.Batch(args.batch_targetkg, args.batch_controlkg, args.batch_controllm),
            group_by_length=method == "mask-grouped")
        start = time.perf_counter()
        trainer = MaskTrainer(model, target, control, blocks, dataclasses.replace(base.mask, top_k_blocks=top_k), cfg,
                              seed=0, progress=False)
        setup_s = time.perf_counter() - start
        step = trainer.step
    elif method == "floor":
        from knowsubnet.method.masking import find_maskable_layers
        from knowsubnet.models.top_blocks import TopBlocks

        layers = find_maskable_layers(model, top_k)
        model.eval().requires_grad_(False)
        for layer in layers:
            layer.weight.requires_grad_(True)
        top = TopBlocks(model, min(layer.block for layer in layers))
        start = time.perf_counter()
        ids = torch.cat([target.input_ids, control.input_ids]).to(device)
        kg_targets = torch.cat([target.targets, control.targets]).to(device)
        kg_hidden, lm_hidden = top.prefix(ids), top.prefix(blocks[:, :-1].to(device))
        lm_targets = blocks[:, 1:].to(device)
        setup_s = time.perf_counter() - start
        scored = kg_targets != -100

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                kg_logits = top.head(top.forward(kg_hidden)[scored])
                lm_logits = top.head(top.forward(lm_hidden))
            loss = (F.cross_entropy(kg_logits.float(), kg_targets[scored])
                    + F.cross_entropy(lm_logits.float().flatten(0, 1), lm_targets.flatten()))
            model.zero_grad(set_to_none=True)
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
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
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
        peak_mib = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2 ** 20
        peak_kind = "CUDA max_memory_allocated above the loaded model"
    else:
        peak_mib = (_status_kib("VmHWM") - base_rss) / 1024
        peak_kind = "peak RSS above the process baseline (model included)"
    n_params = sum(p.numel() for p in model.parameters())
    queue.put({"label": label, "top_k": top_k, "params": n_params, "steps_per_s": args.steps / elapsed,
               "step_s": elapsed / args.steps, "setup_s": setup_s, "peak_mib": peak_mib, "peak_kind": peak_kind})


def measure(shape: str, method: str, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(shape, method, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--batch-targetkg", type=int, default=32)
    parser.add_argument("--batch-controlkg", type=int, default=32)
    parser.add_argument("--batch-controllm", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=256, help="ControlLM tokens per block (capped at the "
                                                                     "model's positions)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up step)")
    parser.add_argument("--paper", action="store_true", help="the paper's batches: 250 / 250 / 10 x 512")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both methods")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", choices=("tiny", "gpt2-small"), help="benchmark one model shape only")
    args = parser.parse_args(argv)
    if args.paper:
        for key, value in PAPER.items():
            setattr(args, key, value)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    print(f"device {args.device}; batches TargetKG {args.batch_targetkg}, ControlKG {args.batch_controlkg}, "
          f"ControlLM {args.batch_controllm} x {args.block_size} tokens; {args.steps} timed steps"
          f"{'; bf16' if args.bf16 else ''}; threads {args.threads or os.cpu_count()}", flush=True)
    shapes = [args.only] if args.only else ["tiny", "gpt2-small"]
    for shape in shapes:
        mask = measure(shape, "mask", args)
        grouped = measure(shape, "mask-grouped", args)
        tune = measure(shape, "finetune", args)
        floor = measure(shape, "floor", args)
        ratio = mask["step_s"] / tune["step_s"]
        floor_ratio = mask["step_s"] / floor["step_s"]
        print(f"\n[{shape}] {mask['label']}, {mask['params'] / 1e6:.1f}M parameters, top {mask['top_k']} blocks masked")
        print(f"  mask step      {mask['steps_per_s']:8.3f} steps/s  ({mask['step_s']:.3f} s/step; "
              f"prefix + reference cache setup {mask['setup_s']:.2f} s)  peak {mask['peak_mib']:8.1f} MiB")
        print(f"  grouped step   {grouped['steps_per_s']:8.3f} steps/s  ({grouped['step_s']:.3f} s/step; "
              f"{grouped['step_s'] / mask['step_s']:.3f} x the padded mask step){'':17s}peak "
              f"{grouped['peak_mib']:8.1f} MiB")
        print(f"  finetune step  {tune['steps_per_s']:8.3f} steps/s  ({tune['step_s']:.3f} s/step)"
              f"{'':38s}peak {tune['peak_mib']:8.1f} MiB")
        print(f"  floor          {floor['steps_per_s']:8.3f} steps/s  ({floor['step_s']:.3f} s/step; masked blocks "
              f"only, forward + backward){'':5s}peak {floor['peak_mib']:8.1f} MiB")
        print(f"  ratio mask / finetune step time: {ratio:.3f} ({'meets' if ratio <= 1.0 else 'misses'} the "
              f"goal <= 1.0); memory: {mask['peak_kind']}")
        print(f"  ratio mask / floor step time:    {floor_ratio:.3f} ({'meets' if floor_ratio <= 1.2 else 'misses'} "
              f"the goal <= 1.2)")
        if args.paper:
            hours = PAPER_STEPS * mask["step_s"] / 3600
            print(f"  projected {PAPER_STEPS:,}-step mask run: {hours:.1f} h (setup excluded)")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
