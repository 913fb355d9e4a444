"""Exporting a masked model: the remaining model (subnetwork removed), or the subnetwork alone, as a
Hugging Face directory that `AutoModelForCausalLM.from_pretrained` loads, with

- provenance.json: where it came from (model directory, mask file and its sha256, sparsity, weights
  zeroed, code version);
- README.md: a model card in Hugging Face's conventions (YAML front matter: license, base_model,
  tags; then the base model and its source, the target removed and its facts' source, the mask's
  hash, the evaluation headline with its verdict, the robustness headline, how the weights were
  made), so the folder can be published as it is (`push_to_hub`, only when asked).

The card is a pure function of its inputs (no dates), so both engines write the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import atomic_path, read_json, sha256_file, write_json, write_text
from knowsubnet.core.provenance import stamp
from knowsubnet.data import user_facts
from knowsubnet.evaluation.ablation import mask_layers
from knowsubnet.evaluation.ablation_results import Headline
from knowsubnet.evaluation.bars import ALL_MET, BARS
from knowsubnet.evaluation.robustness_results import RobustnessHeadline
from knowsubnet.method import masking
from knowsubnet.models.prepare import load_model

log = logging.getLogger(__name__)

KEEP = ("remaining", "subnetwork")
TAGS = ("knowsubnet", "knowledge-removal", "pruning", "masked-model")

# headline.json keys of evaluate_ablation (evaluation.ablation.headline) -> what they mean
EVAL_LABELS = {
    "sparsity": "sparsity: share of the masked layers' weights outside the subnetwork",
    "ratio_removed_targetkg": "TargetKG test PPL ÷ original, subnetwork removed",
    "ratio_random_targetkg": "TargetKG test PPL ÷ original, random weights of the same count removed",
    "ratio_removed_controlkg": "ControlKG test PPL ÷ original, subnetwork removed",
    "ratio_random_controlkg": "ControlKG test PPL ÷ original, random removed",
    "ratio_removed_controllm": "ControlLM (WikiText-2 test) PPL ÷ original, subnetwork removed",
    "ratio_random_controllm": "ControlLM PPL ÷ original, random removed",
    "random_share": "random share: (random TargetKG × − 1) ÷ (removed TargetKG × − 1)",
    "targetkg_acc_original": "TargetKG test top-1 accuracy, original",
    "targetkg_acc_removed": "TargetKG test top-1 accuracy, subnetwork removed",
}
BAR_LABELS = {
    "min_sparsity": "sparsity ≥",
    "min_target_ratio": "TargetKG × ≥",
    "max_random_share": "random share ≤",
    "max_controlkg_ratio": "ControlKG × within [1/bar, bar], bar =",
    "max_controllm_ratio": "ControlLM × within [1/bar, bar], bar =",
}
# params triplets.sources -> what each is (config/base.yaml)
FACT_SOURCES = {
    "builtin": "the project's ConceptNet fact table",
    "lama": "LAMA's ConceptNet facts",
    "know_subnet": "the derived LAMA-ConceptNet files and WordNet lists of the paper (Bayazit et al.)",
    "wordnet": "the noun hypernym edges of WordNet 3.0",
}
# headline.json keys of evaluate_robustness (evaluation.robustness.headline) -> what they mean
ROBUSTNESS_LABELS = {
    "in_sample_ratio": "TargetKG facts trained on: PPL ÷ original",
    "held_out_ratio": "held-out TargetKG facts: PPL ÷ original",
    "train_heldout_wording_ratio": "trained facts in wordings never trained on: PPL ÷ original",
    "test_heldout_wording_ratio": "test facts in wordings never trained on: PPL ÷ original",
    "test_heldout_wording_suppressed": "test facts in unseen wordings: share suppressed",
    "choice_acc_original": "multiple choice accuracy, original",
    "choice_acc_removed": "multiple choice accuracy, subnetwork removed",
    "choice_acc_random": "multiple choice accuracy, random removed",
    "false_tail_ratio": "false tails of the target's facts: PPL ÷ original",
    "foreign_head_ratio": "the target's tails after other heads: PPL ÷ original",
    "same_head_ratio": "other facts about the same heads: PPL ÷ original",
    "controlkg_kl_removed": "ControlKG next-token KL to the original, subnetwork removed",
    "controlkg_kl_random": "ControlKG next-token KL to the original, random removed",
    "quantized_4bit_targetkg_ratio": "TargetKG PPL ÷ original after 4-bit rounding",
    # the first point of params robustness.relearn.points, removed weights held at 0
    "relearn_targetkg_recovered": "share of the removal recovered by finetuning on TargetKG (first relearning point)",
    "relearn_controlkg_recovered": "share recovered by finetuning on ControlKG (first relearning point)",
}


def export_masked_model(
    model_dir: Path,
    mask: Path,
    out: Path,
    *,
    keep: str,
    targets: dict[str, dict] | None = None,
    fact_sources: list[str] | None = None,
    headline: Path | None = None,
    robustness: Path | None = None,
    bars: dict[str, float] | None = None,
) -> dict:
    """Write the folder `out` (atomically): the model of `model_dir` with the subnetwork of `mask`
    zeroed (`keep="remaining"`) or with only it kept in the masked layers (`keep="subnetwork"`),
    its tokenizer, provenance.json and the model card README.md; returns the provenance.

    The card reads the selector of the mask's target in `targets` (params `targets`), the fact
    sources (params `triplets.sources`), evaluate_ablation's `headline` file with its verdict against
    `bars` (params `report.bars`) and evaluate_robustness's headline file (`robustness`), each
    where given."""
    if keep not in KEEP:
        raise InputError(f"params key 'export.keep' = {keep!r}: expected one of {', '.join(KEEP)}")
    model_dir, mask, out = Path(model_dir), Path(mask), Path(out)
    headline_numbers = _read_headline(headline, Headline)
    robustness_numbers = _read_headline(robustness, RobustnessHeadline)
    # keep the weights' stored dtype (a bf16 model stays bf16; zeroing is exact in any dtype)
    stored = getattr(AutoConfig.from_pretrained(model_dir), "dtype", None)
    dtype = stored if isinstance(stored, torch.dtype) else torch.float32
    model, tokenizer = load_model(model_dir, torch.device("cpu"), dtype)
    logits, metadata = masking.load_mask(mask)
    layers, granularity = mask_layers(model, logits, metadata, source=str(mask))
    binary = masking.binary_masks(logits)
    sparsity = masking.sparsity(model, layers, binary, granularity)
    in_subnetwork = masking.subnetwork_size(layers, binary, granularity)

    with atomic_path(out) as tmp:
        # masked_weights zeroes in place and restores on exit: save while it is applied
        with masking.masked_weights(layers, binary, granularity, keep=keep):
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        provenance = stamp(
            None,
            source_model_dir=str(model_dir),
            mask=str(mask),
            mask_sha256=sha256_file(mask),
            mask_metadata=metadata,
            keep=keep,
            sparsity=sparsity,
            masked_layers=[layer.name for layer in layers],
            weights_zeroed=in_subnetwork
            if keep == "remaining"
            else sum(layer.weight.numel() for layer in layers) - in_subnetwork,
            dtype=str(dtype).removeprefix("torch."),
        )
        write_json(tmp / "provenance.json", provenance)
        model_provenance = read_json(model_dir / "provenance.json") if (model_dir / "provenance.json").is_file() else {}
        target_spec = (targets or {}).get(metadata.get("target"))
        write_text(
            tmp / "README.md",
            model_card(
                model_provenance,
                provenance,
                target_spec=target_spec,
                fact_sources=fact_sources,
                headline=headline_numbers,
                robustness=robustness_numbers,
                bars=bars,
            ),
        )
    log.info("wrote %s (%s; sparsity of masked layers %.4f)", out, keep, sparsity["masked_layers"])
    return provenance


def _read_headline(path: Path | None, kind: type[Headline] | type[RobustnessHeadline]) -> dict | None:
    """A headline file read through its type, as the flat {key: value} the card shows."""
    return None if path is None else kind.read(path).to_dict()


# -- the model card ---------------------------------------------------------------------------


def model_card(
    model: dict[str, Any],
    export: dict[str, Any],
    *,
    target_spec: dict | None = None,
    fact_sources: list[str] | None = None,
    headline: dict | None = None,
    robustness: dict | None = None,
    bars: dict[str, float] | None = None,
) -> str:
    """README.md of an exported folder: `model` is the model directory's provenance.json
    (models.prepare), `export` the export's provenance; the rest as `export_masked_model`."""
    meta = export["mask_metadata"]
    name, target, seed, keep = meta.get("model", "?"), meta.get("target", "?"), meta.get("seed", "?"), export["keep"]
    spec = model.get("spec") or {}
    licence = spec.get("license")
    base_model = spec.get("base_model") or (model.get("repo_id") if model.get("source") == "hub" else None)

    front = ["---", f"license: {_scalar(licence or 'unknown')}"]
    if base_model:
        front.append(f"base_model: {_scalar(base_model)}")
    front += [
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        *[f"- {tag}" for tag in TAGS],
        "---",
        "",
    ]

    removed = "with the subnetwork removed" if keep == "remaining" else "reduced to the subnetwork"
    lines = [
        f"# {name} {removed}: target {target}, mask seed {seed}",
        "",
        f"`{name}` {_keep_sentence(keep, target)} The subnetwork was found by knowsubnet: a learned "
        f"binary mask over the linear layers of the model's top {_blocks(meta)}. Every weight outside "
        f"those layers is the base model's.",
        "",
    ]
    lines += ["## Base model", "", *_base_model_lines(name, model), ""]
    lines += [
        "Licence: "
        + (
            f"`{licence}` (params key `models.{name}.license`)."
            if licence
            else f"unknown. No licence is recorded for `{name}` (params key `models.{name}.license`); "
            f"the weights carry the terms of the base model and of its training data: check "
            f"them before publishing."
        ),
        "",
    ]
    lines += ["## What was removed", "", *_target_lines(target, target_spec, fact_sources), ""]
    lines += [
        "## The mask",
        "",
        f"- file: `{Path(export['mask']).name}`, sha256 `{export['mask_sha256']}`",
        f"- granularity: {meta.get('granularity', '?')}, blocks masked: the top {meta.get('top_k_blocks', '?')}, "
        f"sampler: {meta.get('sampler', '?')}, seed: {seed}",
        f"- masked layers: {len(export.get('masked_layers') or [])}; sparsity of the masked layers "
        f"{export['sparsity']['masked_layers']:.4f}, of all weights {export['sparsity']['all_weights']:.4f}",
        f"- weights set to 0: {export['weights_zeroed']:,}",
        "",
    ]
    lines += ["## Evaluation (test splits)", "", *_evaluation_lines(headline, bars), ""]
    lines += ["## Robustness: removed, or only hidden?", "", *_robustness_lines(robustness), ""]
    lines += ["## How the weights were obtained", "", *_how_lines(name, model, export, keep), ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(front + lines).rstrip("\n") + "\n"


def _blocks(meta: dict[str, Any]) -> str:
    count = str(meta.get("top_k_blocks", "?"))
    return f"{count} block" if count == "1" else f"{count} blocks"


def _scalar(text: str) -> str:
    """A YAML scalar: plain when it is a simple id (mit, openai-community/gpt2), else quoted."""
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", text) else json.dumps(text)


def _keep_sentence(keep: str, target: str) -> str:
    if keep == "remaining":
        return (
            f"with the weights that carry its knowledge of the target `{target}` set to exactly 0 "
            f"(the remaining model: what the base model knows without that subnetwork)."
        )
    return (
        f"reduced to the subnetwork for the target `{target}`: in the masked layers only the "
        f"subnetwork's weights are kept, the others set to 0 (for study, not for use as a language model)."
    )


def _gguf_type(file: str) -> str | None:
    """The quantisation in a GGUF file's conventional name (SmolLM2-135M-Instruct.Q4_1.gguf: Q4_1)."""
    found = re.search(r"[.-]((?:I?Q\d+(?:_[A-Z0-9]+)*)|F16|F32|BF16)\.gguf$", file, flags=re.IGNORECASE)
    return found.group(1).upper() if found else None


def _base_model_lines(name: str, model: dict[str, Any]) -> list[str]:
    source = model.get("source")
    if source == "hub":
        return [
            f"- `{model.get('repo_id')}` from the Hugging Face hub, revision `{model.get('revision')}`"
            f" (project name `{name}`)"
        ]
    if source == "gguf_wheel":
        quant = _gguf_type(str(model.get("file", "")))
        return [
            f"- `{model.get('file')}` (sha256 `{model.get('file_sha256')}`), the GGUF file inside the PyPI "
            f"wheel `{model.get('wheel')}` (`{model.get('package')}`, sha256 `{model.get('wheel_sha256')}`)",
            f"- dequantised from {quant or 'its GGUF quantisation'} to float32 by transformers' GGUF loader "
            f"(checked to give the GGUF model's logits), then saved as safetensors",
        ]
    if source == "tiny":
        spec = model.get("spec") or {}
        return [
            f"- no upstream model: a small GPT-2 ({spec.get('n_layer', '?')} layers, width {spec.get('n_embd', '?')}) "
            f"trained by knowsubnet on the run's facts and WikiText-2 text (`knowsubnet.models.tiny`, seed "
            f"{model.get('seed', '?')}), a test model"
        ]
    return [f"- not recorded: the model directory of `{name}` has no provenance.json"]


def _target_lines(target: str, spec: dict | None, sources: list[str] | None) -> list[str]:
    if user_facts.is_user_target(spec):  # file names and hashes, not the paths of someone's disk
        files = {key: Path(spec[key]) for key in ("facts", "templates", "controls") if spec.get(key)}
        digest = f" (sha256 `{sha256_file(files['facts'])}`)" if files["facts"].is_file() else ""
        out = [f"- target `{target}`: every fact of the file `{files['facts'].name}`{digest}"]
        if "templates" in files:
            out.append(f"- templates: `{files['templates'].name}`, its relations' wordings")
        out.append(
            "- facts kept (ControlKG): "
            + (f"`{files['controls'].name}`" if "controls" in files else "the project's ConceptNet facts")
            + ", less every fact sharing an entity with the target"
        )
        return out
    out = [
        f"- target `{target}`"
        + (
            f", selector `{json.dumps(spec, sort_keys=True)}` (params key "
            f"`targets.{target}`): {_describe_selector(spec)}"
            if spec
            else ""
        )
    ]
    out.append(
        "- facts from (params key `triplets.sources`): "
        + (
            "; ".join(f"`{s}`, {FACT_SOURCES.get(s, 'see the project docs')}" for s in sources)
            if sources
            else "not recorded"
        )
    )
    return out


def _describe_selector(spec: dict) -> str:
    if "rel" in spec:
        return f"the facts of the ConceptNet relation {spec['rel']}"
    if "concept" in spec:
        return f"the facts around the concept '{spec['concept']}'" + (
            f" (the fixed list {spec['facts']})" if "facts" in spec else f" ({spec.get('hops', 1)} hops)"
        )
    if "wordnet" in spec:
        fixed = f" (the fixed list {spec['facts']})" if "facts" in spec else ""
        return f"WordNet hypernym edges around {spec['wordnet']}{fixed}"
    if "csqa" in spec:
        return f"the facts linked to CommonsenseQA questions ({spec['csqa']})"
    return "see the selector"


def _number(value: Any) -> str:
    """A headline value as written in its JSON file (n/a for null), so the card and file agree."""
    return "n/a" if value is None else json.dumps(value)


def _table(rows: list[tuple[str, str, str]], header: tuple[str, str, str]) -> list[str]:
    return [
        f"| {header[0]} | {header[1]} | {header[2]} |",
        "|---|---|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]


def _headline_rows(numbers: dict, labels: dict[str, str]) -> list[tuple[str, str, str]]:
    keys = [k for k in labels if k in numbers] + sorted(k for k in numbers if k not in labels)
    return [(labels.get(k) or _dppl_label(k), f"`{k}`", _number(numbers[k])) for k in keys]


def _dppl_label(key: str) -> str:
    """dppl_<variant>_<set> -> its meaning (other unknown keys stay as they are)."""
    found = re.fullmatch(r"dppl_(removed|random)_(targetkg|controlkg|controllm)", key)
    names = {"targetkg": "TargetKG", "controlkg": "ControlKG", "controllm": "ControlLM"}
    return (
        f"{names[found.group(2)]} PPL − original PPL, {'subnetwork' if found.group(1) == 'removed' else 'random'} "
        f"removed"
        if found
        else key
    )


def _evaluation_lines(headline: dict | None, bars: dict[str, float] | None) -> list[str]:
    if headline is None:
        return ["Not evaluated with this export (no evaluate_ablation headline given)."]
    numbers = {k: v for k, v in headline.items() if not k.startswith("met_") and k != "verdict"}
    out = [
        "The removed model against the original on the held-out test splits of the target's facts (TargetKG), "
        'other facts (ControlKG) and WikiText-2 text (ControlLM); "random" removes as many random weights per '
        "matrix.",
        "",
        *_table(_headline_rows(numbers, EVAL_LABELS), ("number", "key", "value")),
        "",
        f"**Verdict: {_verdict(headline.get('verdict'))}** (against the bars of params `report.bars`)",
        "",
        "| bar | threshold | met |",
        "|---|---|---|",
    ]
    for bar in BARS:
        threshold = f"{BAR_LABELS[bar]} {_number(bars[bar])}" if bars and bar in bars else "not given"
        met = headline.get(f"met_{bar}")
        out.append(f"| `{bar}` | {threshold} | {'n/a' if met is None else 'yes' if met else 'no'} |")
    return out


def _verdict(verdict: str | None) -> str:
    """headline.json's verdict: "all met", or the missed bars' names (evaluation.bars.check_bars)."""
    return "not recorded" if verdict is None else verdict if verdict == ALL_MET else f"missed {verdict}"


def _robustness_lines(robustness: dict | None) -> list[str]:
    if robustness is None:
        return ["Not measured with this export (no evaluate_robustness headline given)."]
    return [
        "Held-out facts and wordings, multiple choice, specificity, quantisation and relearning (no bars: "
        "read them as evidence, the project's docs/ROBUSTNESS.md says what each means; n/a: undefined).",
        "",
        *_table(_headline_rows(robustness, ROBUSTNESS_LABELS), ("number", "key", "value")),
    ]


def _how_lines(name: str, model: dict[str, Any], export: dict[str, Any], keep: str) -> list[str]:
    meta = export["mask_metadata"]
    rule = (
        "every weight in the mask set to exactly 0"
        if keep == "remaining"
        else "every weight of the masked layers outside the mask set to exactly 0"
    )
    return [
        f"1. `{name}` prepared as a float32 Hugging Face folder (above; source `{model.get('source', '?')}`).",
        f"2. A mask over the linear layers of the top {_blocks(meta)} trained with a "
        f"{meta.get('sampler', '?')} relaxation (seed {meta.get('seed', '?')}) to raise the target's tail "
        f"perplexity while keeping ControlKG facts and WikiText-2 text as the original has them, and sparse; "
        f"the mask is its logits > 0.",
        f"3. `keep={keep}`: {rule}; no other weight changed, no finetuning.",
        f"4. Saved with transformers' `save_pretrained` (safetensors, {export.get('dtype', 'float32')}) with the "
        f"base model's tokenizer; provenance.json records the source folder, the mask's sha256 and the code "
        f"version `{export.get('code_version', '?')}`.",
    ]


# -- publishing ---------------------------------------------------------------------------------


def export_from_params(
    params,
    *,
    model_dir: Path,
    mask: Path,
    out: Path,
    keep: str | None = None,
    headline: Path | None = None,
    robustness: Path | None = None,
    hub_repo: str | None = None,
    public: bool = False,
) -> dict:
    """The export_remaining stage: `export_masked_model` with what the params say (export.keep unless
    `keep` is given, the targets, triplets.sources, report.bars), then, when asked, the upload of the
    folder to the hub repo `hub_repo` (private unless `public`)."""
    result = export_masked_model(
        model_dir,
        mask,
        out,
        keep=keep or params.export.keep,
        targets=params.targets,
        fact_sources=list(params.triplets.sources),
        headline=headline,
        robustness=robustness,
        bars=dataclasses.asdict(params.report.bars),
    )
    if hub_repo:
        print(push_to_hub(out, hub_repo, private=not public))
    return result


def push_to_hub(folder: Path, repo_id: str, *, private: bool = True, token: str | None = None) -> str:
    """Upload an exported folder to the Hugging Face hub as the model repo `repo_id` (created if
    missing, private unless asked otherwise); returns the commit's URL. Only called when asked
    (`knowsubnet export_remaining --push-to-hub`); needs network and a token with write access."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "README.md").is_file() or not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not an exported model folder (expected config.json and README.md)")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=f"knowsubnet export of {folder.name}",
    )
    return str(getattr(commit, "commit_url", commit))
