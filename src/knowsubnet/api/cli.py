"""The `knowsubnet` command: your model and your facts through the pipeline's stages, in a folder of yours.

    knowsubnet discover   --model M --facts F [--templates T] [--controls C] [--out DIR]
    knowsubnet evaluate   ...   (discover, then the ablation metrics on the held-out facts)
    knowsubnet robustness ...   (discover, then held-out wordings, context, readouts, quantization, relearning)
    knowsubnet export     ...   (all of the above, then the model without the subnetwork and its model card)

Each command runs what it needs first, skips what is done, and writes the files the pipeline writes
(`api.run.Run`). docs/YOUR_FACTS.md is the guide.

The pipeline's rules call one stage each, `knowsubnet <stage> --params FILE ... [arguments]`
(`knowsubnet fetch_data`, `discover_mask`, ...; declared in api.stages).
"""

from __future__ import annotations

import argparse
import sys

from knowsubnet.api import stages
from knowsubnet.core.errors import cli_entry
from knowsubnet.core.io import read_json

COMMANDS = {
    "discover": "learn the mask that removes the facts",
    "evaluate": "discover, then the ablation metrics on held-out test facts",
    "robustness": "discover, then whether the knowledge is removed or only hidden",
    "export": "evaluate and robustness, then the model without the subnetwork, with a model card",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="knowsubnet", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--model",
            required=True,
            help="a Hugging Face model folder, a .gguf file, a hub id, or a params model name "
            "(tiny-gpt2: a small GPT-2 trained here on your facts)",
        )
        sub.add_argument("--facts", required=True, help="your facts: CSV, JSONL or parquet of head, relation, tail")
        sub.add_argument("--templates", help="YAML of templates per relation (needed for relations the repo lacks)")
        sub.add_argument("--controls", help="facts to keep (default: the repo's ConceptNet facts sharing no entity)")
        sub.add_argument("--out", default="knowsubnet-run", help="the run folder (default: %(default)s)")
        sub.add_argument("--target", help="the target's name (default: the fact file's name)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the mask and the splits (default: 0)")
        sub.add_argument(
            "--params",
            nargs="+",
            default=[],
            metavar="YAML",
            help="params files merged over the packaged defaults (config/base.yaml)",
        )
        sub.add_argument(
            "--set",
            nargs="+",
            default=[],
            metavar="KEY=VALUE",
            dest="sets",
            help="params overrides, e.g. train.steps=100 (last word)",
        )
        sub.add_argument("--mirror", help="a local copy of the datasets (data.mirror; default: download)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "export":
            sub.add_argument("--keep", choices=stages.KEEP, help="remaining (default) or subnetwork")
            sub.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the export to the hub (private)")
    for stage in stages.STAGES.values():
        stages.add_parser(commands, stage)
    return top


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command in stages.STAGES:
        stages.run_stage(stages.STAGES[args.command], args)
        return
    # here, not at the top: a stage command loads only its own stage's modules (torch takes seconds)
    from knowsubnet.api.run import Run, build_params
    from knowsubnet.evaluation.ablation_results import Headline
    from knowsubnet.evaluation.export import push_to_hub
    from knowsubnet.evaluation.robustness_results import RobustnessHeadline

    sets = ([f"data.mirror={args.mirror}"] if args.mirror else []) + args.sets
    mapping, model, target = build_params(
        args.model,
        args.facts,
        templates=args.templates,
        controls=args.controls,
        target=args.target,
        seed=args.seed,
        params_files=args.params,
        sets=sets,
    )
    run = Run.create(args.out, mapping, model, target, progress=not args.no_progress)
    if args.command == "discover":
        mask = run.discover()
        _show(
            "mask",
            mask,
            read_json(run.mask_dir / "metrics.json"),
            ("suppress", "controlkg", "controllm", "sparsity_masked_layers"),
        )
    elif args.command == "evaluate":
        metrics = run.evaluate()
        _show("metrics", metrics, Headline.read(metrics.with_name("headline.json")).to_dict())
    elif args.command == "robustness":
        result = run.robustness()
        _show("robustness", result, RobustnessHeadline.read(result.with_name("headline.json")).to_dict())
    else:
        folder = run.export(keep=args.keep)
        print(f"export: {folder} (model card: {folder / 'README.md'})")
        if args.push_to_hub:
            print(push_to_hub(folder, args.push_to_hub))


def _show(what: str, path, numbers: dict, keys: tuple[str, ...] | None = None) -> None:
    """The file written and its top-level numbers, one line each."""
    print(f"{what}: {path}")
    for key, value in numbers.items():
        if (keys is None or key in keys) and not isinstance(value, (dict, list)):
            print(f"  {key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
