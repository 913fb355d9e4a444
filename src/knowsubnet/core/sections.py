"""Every parameter, once: one frozen pydantic dataclass per params section, each field with its default
(the tiny preset), its allowed range and its documentation.

`config/base.yaml` and `config/params.schema.yaml` are generated from these classes
(`python -m knowsubnet.core.config_files`); `core.config` reads params files into them. A new param
is one field here, then the generator. Field order is the order of base.yaml. The sections of the
downstream stages (CommonsenseQA finetuning, export) are in `core.sections_downstream`.
The sections live in core, not beside the code each configures: every layer reads them, and only core
is below them all. They are pydantic *dataclasses* so that `dataclasses.asdict` / `replace` keep
working, and a number field keeps an integer as YAML read it (`lr: 1` stays 1, not 1.0): provenance
records and checkpoint fingerprints stay the same bytes.
"""

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, WrapValidator
from pydantic.dataclasses import dataclass
from typing_extensions import TypedDict

from knowsubnet.core import free_form

section = dataclass(frozen=True, config=ConfigDict(extra="forbid"))  # the decorator of every section


def _keep_int(value, handler):
    checked = handler(value)  # type and range checked as a float
    return value if type(value) is int else checked


def number(**limits):
    """A float field with its limits (gt, ge, lt, le); an integer given stays an integer."""
    return Annotated[float, Field(**limits), WrapValidator(_keep_int)]


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = number(ge=0, le=1)
UNIQUE = Field(json_schema_extra={"uniqueItems": True})
Seeds = Annotated[list[NonNegInt], Field(min_length=1), UNIQUE]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?|mps)$")]
ComputeDtype = Literal["auto", "float32", "bfloat16"]
RelearnData = Annotated[list[Literal["targetkg", "controlkg", "wikitext", "unknown"]], UNIQUE]
# multiples of the mask's per-matrix counts, scored on the validation sets; 1.0 is the removal evaluated
Multiples = Annotated[
    list[number(gt=0)], Field(min_length=1, json_schema_extra={"uniqueItems": True, "contains": {"const": 1.0}})
]
BASELINES = ("random_magnitude", "attribution", "neurons", "graddiff", "npo", "rmu")  # as method/registry.py
DEVICE = "auto: CUDA when present, else CPU"


class Closed(TypedDict):  # a small mapping with fixed keys (a dict in code)
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]


@section
class Data:
    mirror: str | None = Field(
        None, description="a local copy of the canonical datasets (layout of ../shared/data); null: download them"
    )
    verify_checksums: bool = Field(True, description="check each fetched file's sha256 against the pinned one")


@section
class Triplets:
    sources: Annotated[list[Literal["builtin", "know_subnet", "lama", "wordnet"]], Field(min_length=1), UNIQUE] = Field(
        ["builtin", "know_subnet", "wordnet"],
        description="Where facts come from: builtin (the in-repo table data/facts/conceptnet_facts.tsv), know_subnet "
        "(the paper's derived LAMA-ConceptNet files and WordNet lists), lama (LAMA ConceptNet jsonl or "
        "its Hugging Face form, path given in lama_path), wordnet (every noun hypernym edge of the "
        "WordNet 3.0 database: WordNet targets built for any synset).",
    )
    lama_path: str | None = Field(
        None, description="LAMA ConceptNet test.jsonl (or its Hugging Face export); needed by source lama"
    )


class Fractions(Closed):
    train: number(gt=0, le=1)
    val: number(gt=0, le=1)
    test: number(gt=0, le=1)


class Caps(Closed):
    train: PosInt
    val: PosInt
    test: PosInt


@section
class Split:
    seed: NonNegInt = Field(0, description="seed of the shuffles that split the facts")
    targetkg_holdout: bool = Field(
        False,
        description=(
            "The paper suppresses exactly the named facts: TargetKG train = val = test. Set true to hold out "
            "TargetKG val/test facts instead (measures generalisation of the removal)."
        ),
    )
    holdout: Literal["entity", "fact"] = Field(
        "entity",
        description=(
            "With targetkg_holdout true: entity = no val / test fact shares a head or tail with a train fact (nor "
            "val with test; a concept target's concept and a WordNet target's root synset excepted), dropping the "
            "fewest facts the entity graph allows; fact = cut per fact (entities shared)."
        ),
    )
    fractions: Fractions = Field({"train": 0.8, "val": 0.1, "test": 0.1}, description="shares of each split")
    max_targetkg: PosInt = Field(120, description="TargetKG facts kept per target (seeded sample)")
    max_controlkg: Caps = Field({"train": 400, "val": 100, "test": 100}, description="ControlKG facts per split")
    controlkg: Literal["own", "paper"] = Field(
        "own",
        description=(
            "own: facts sharing no entity with the TargetKG (WordNet: edges outside every WordNet target's "
            "subtree); paper: the paper's fixed ControlKG files (WordNet: first paper_wordnet_controlkg edges)"
        ),
    )
    paper_wordnet_controlkg: PosInt = Field(
        50, description="with controlkg paper, the first this many edges of the paper's WordNet ControlKG (paper 50)"
    )


@section
class Run:
    models: Annotated[list[str], Field(min_length=1), UNIQUE] = Field(
        ["tiny-gpt2"], description="models run (names under `models`)"
    )
    targets: Annotated[list[str], Field(min_length=1), UNIQUE] = Field(
        ["IsA", "HasProperty", "UsedFor", "csqa1"], description="targets run (names under `targets`)"
    )
    seeds: Seeds = Field([0, 1, 2], description="mask seeds, one run per model x target x seed")
    baselines: Annotated[list[Literal[BASELINES]], UNIQUE] = Field(
        [],
        description=(
            "Other ways of removing the same knowledge, each run per model x target x seed beside the learned mask "
            "(the reference) and evaluated the same way (section `baselines`; docs/BASELINES.md): "
            + ", ".join(BASELINES)
        ),
    )


@section
class Verbalize:
    batch_size: PosInt = Field(64, description="sentences per forward")
    device: Device = Field("auto", description=DEVICE)
    other_heads: NonNegInt = Field(
        0, description="also score each tail with this many other heads (head_gain, for known.min_head_gain)"
    )
    seed: NonNegInt = Field(0, description="seed of the other heads' draw")
    scored_positions: Literal["all_tail_tokens", "last_token"] = Field(
        "all_tail_tokens",
        description=(
            "Tail tokens scored (verbalize, discovery, evaluation): all_tail_tokens, or last_token (the paper)"
        ),
    )


@section
class Known:
    """Which facts the model knows; discovery and evaluation keep only those (null: bound off)."""

    max_tail_ppl: number(gt=1) | None = Field(None, description="best-template tail PPL at most this")
    min_head_gain: number(gt=0) | None = Field(
        None, description="tail at least this many times likelier with its head than with others"
    )


@section
class ControlLM:
    block_size: Annotated[int, Field(ge=8)] = Field(
        128, description="tokens per block (paper: 512; at most the model's context)"
    )
    max_train_blocks: PosInt | None = Field(512, description="null: all")
    max_val_blocks: PosInt = Field(
        16, description="last blocks of the training text, held out for checkpoint selection"
    )
    max_test_blocks: PosInt | None = Field(256, description="null: all")
    train_text: Literal["valid", "train"] = Field(
        "valid", description="valid | train (the paper; not in the local mirror, downloaded)"
    )
    test_fraction: number(gt=0, le=1) = Field(
        1.0, description="evaluate on the first share of wiki.test.raw's lines (paper: 0.2)"
    )


@section
class HardConcrete:
    beta: number(gt=0) = Field(0.6666667, description="temperature")
    gamma: number(lt=0) = Field(-0.1, description="lower end of the stretched interval")
    zeta: number(gt=1) = Field(1.1, description="upper end of the stretched interval")
    hard: bool = Field(False, description="0/1 forward, straight-through")


@section
class Mask:
    granularity: Literal["weight", "neuron_in", "neuron_out"] = Field(
        "weight", description=("weight | neuron_in | neuron_out")
    )
    top_k_blocks: PosInt | number(gt=0, lt=1) = Field(
        4,
        description=(
            "masked top blocks; below 1 a share of the blocks. tiny: all 4 blocks (its facts live low, block 0 "
            "included); paper: 6 of GPT-2 small's 12"
        ),
    )
    sampler: Literal["gumbel_sigmoid", "hard_concrete"] = Field(
        "gumbel_sigmoid", description=("or hard_concrete (Louizos et al. 2018)")
    )
    init_prob: number(gt=0, lt=1) = Field(0.45, description="logits start at logit(0.45)")
    tau: number(gt=0) = Field(1.0, description="Gumbel-sigmoid temperature")
    hard_concrete: HardConcrete = Field(default_factory=HardConcrete, description="the hard_concrete sampler")


@section
class Ramp:
    """`start` until the fraction `ramp_from` of the run, then linear to `end` at the last step."""

    start: number(ge=0) = Field(10.0, description="value until ramp_from")
    end: number(ge=0) = Field(15.0, description="value at the last step")
    ramp_from: Fraction = Field(0.5, description="share of the run where the linear ramp starts")


@section
class NoiseRamp(Ramp):
    start: number(gt=0) = Field(1.0, description="value until ramp_from")
    end: number(gt=0) = Field(1.0, description="value at the last step")


@section
class Batch:
    targetkg: PosInt = Field(64, description="TargetKG facts per step")
    controlkg: PosInt = Field(64, description="ControlKG facts per step")
    controllm: NonNegInt = Field(4, description="ControlLM blocks per step")


@section
class Select:
    """Checkpoint selection on the validation sets (`method.training.select_checkpoint`)."""

    every: NonNegInt = Field(50, description="validate every this many steps")
    min_sparsity: Fraction = Field(0.95, description="sparsity the kept mask reaches at least")
    min_target_ratio: number(ge=0) = Field(10.0, description="TargetKG val PPL at least this x the original's")
    prefer: Literal["least_damage", "most_removal"] = Field(
        "least_damage",
        description=(
            "Among the qualifying checkpoints: least_damage, the least control damage (made for the flat-token "
            "objective's x10-x1000 removals); most_removal, the highest TargetKG val PPL among those whose "
            "ControlKG and ControlLM val ratios stay within the two-sided bars below (for an objective whose "
            "removal grows by orders of magnitude late, where least damage trades most of it for a little)"
        ),
    )
    max_controlkg_ratio: number(ge=1) = Field(
        1.10, description="most_removal: ControlKG val PPL ratio within [1 / this, this] (as report.bars)"
    )
    max_controllm_ratio: number(ge=1) = Field(
        1.05, description="most_removal: ControlLM val PPL ratio within [1 / this, this] (as report.bars)"
    )


@section
class Adversary:
    """Attacks on the remaining model inside the mask's training (`method.adversary`): the mask is trained to
    keep the facts suppressed after them too (tamper resistance)."""

    weight: number(ge=0) = Field(
        0.0, description="weight of the suppression loss on the attacked remaining model (0: no adversary)"
    )
    attacks: Annotated[list[Literal["relearn", "quantize"]], Field(min_length=1), UNIQUE] = Field(
        ["relearn"],
        description=(
            "relearn: a finetune on ControlLM text, one Adam step per mask step; quantize: the remaining masked "
            "layers rounded as gguf would (straight-through); both: the finetuned model, rounded"
        ),
    )
    lr: number(gt=0) = Field(1.0e-4, description="relearn: Adam's learning rate (the robustness stage's relearning)")
    restart_every: PosInt = Field(
        50, description="relearn: the finetune starts again from the remaining model every this many mask steps"
    )
    batch: PosInt = Field(2, description="relearn: ControlLM training blocks per finetune step")
    bits: Literal[4, 8] = Field(4, description="quantize: bits per weight (Q4_0 or Q8_0, as robustness.quantize)")


@section
class Train:
    steps: PosInt = Field(300, description="training steps")
    lr: number(gt=0) = Field(0.2, description="Adam, as the paper")
    warmup_frac: Fraction = Field(0.1, description="linear warm-up, then constant")
    lambda_suppress: number(ge=0) = Field(1.5, description="weight of the TargetKG suppression loss")
    lambda_controlkg: number(ge=0) = Field(1.0, description="weight of the ControlKG KL loss")
    lambda_controllm: number(ge=0) = Field(1.0, description="weight of the ControlLM KL loss")
    sparsity_weight: Ramp = Field(
        default_factory=Ramp,
        description=(
            "Weight of the sparsity loss: constant, then linear from half-way. Paper: 2 -> 3 over 40k steps; a "
            "300-step run needs a stronger push to reach the same sparsity (tiny: >= 97 % with 10 -> 15)."
        ),
    )
    noise_scale: NoiseRamp = Field(
        default_factory=NoiseRamp,
        description=(
            "Scale of the mask's logistic noise (the paper: 1 throughout). Below 1 the masks sampled in training "
            "approach the deterministic one evaluated (logit > 0); at 1 a mask whose logits sit at logit(0.02) still "
            "drops a random 2 % of the weights every step."
        ),
    )
    batch: Batch = Field(default_factory=Batch, description="per step")
    log_every: PosInt = Field(10, description="log a row every this many steps")
    checkpoint_every: PosInt = Field(100, description="write the resumable checkpoint every this many steps")
    device: Device = Field("auto", description=DEVICE)
    dtype: ComputeDtype = Field(
        "auto",
        description=(
            "auto: bfloat16 on a GPU, or a CPU with native bf16 (amx_bf16 / avx512_bf16 flags), else float32. "
            'Mask logits, Adam state, losses and references stay fp32 (docs/PRECISION.md, "bf16").'
        ),
    )
    lambda_expression: number(ge=0) = Field(
        0.0, description="expression loss (the authors' option; their weight 1.0): subnetwork alone on TargetKG"
    )
    lambda_hidden: number(ge=0) = Field(
        0.0,
        description=(
            "hidden-state loss (0: off, the paper's objective): at every prompt position of a TargetKG train fact, "
            "what the masked blocks up to `hidden_layer` add to the residual stream is pushed orthogonal to the "
            "original's (mean cos^2; method.objectives)"
        ),
    )
    hidden_layer: PosInt = Field(
        1, description="the block it reads, from the top of the masked ones (1: the last), as baselines.rmu.layer"
    )
    suppress_objective: Literal["uniform", "npo"] = Field(
        "uniform",
        description=(
            "the suppression loss at TargetKG tails: uniform, KL(U || p_rem) (the paper's: a flat next token); npo, "
            "NPO's loss on the tail token itself, (2 / npo_beta) softplus(npo_beta (log p_rem - log p_orig)) "
            "(method.objectives)"
        ),
    )
    npo_beta: number(gt=0) = Field(
        0.1, description="NPO's inverse temperature, for suppress_objective npo (as baselines.npo.beta)"
    )
    lambda_other_tails: number(ge=0) = Field(
        0.0,
        description=(
            "weight of the loss that keeps, at TargetKG tails, the original's distribution over every token but the "
            "tail: a removal of the fact, not of every tail word in its context (robustness' wrong tails)"
        ),
    )
    adversary: Adversary = Field(
        default_factory=Adversary,
        description=(
            "tamper resistance: the suppression loss again on the remaining model after adversary.attacks (a "
            "relearning finetune on ControlLM text, 4-bit rounding), weighed adversary.weight"
        ),
    )
    controlkg_known_only: bool = Field(
        True, description="false: the ControlKG objective uses every ControlKG fact, known or not"
    )
    group_by_length: bool = Field(
        False,
        description=(
            "true: run a batch's facts in groups of similar length instead of padding all of them to the longest "
            "(SmolLM2 demo: 0.78 x the step time). Same losses up to float rounding, so off by default: every "
            "number measured with it off stays reproducible to the last digit."
        ),
    )
    targetkg_templates: Literal["best", "all"] = Field(
        "best",
        description=(
            "Which sentences of a TargetKG train fact the suppression trains on: best (the paper: the template the "
            "original model finds most natural) or all (every template of its relation, a paraphrase-aware "
            "removal; the robustness stage's two extra paraphrases per relation stay unseen)."
        ),
    )
    select: Select = Field(
        default_factory=Select,
        description=(
            "Keep the validated mask (TargetKG / ControlKG val, held-out ControlLM blocks) that removes the target "
            "(TargetKG PPL >= min_target_ratio x original) at sparsity >= min_sparsity with the least damage to the "
            "controls; the last one if none does."
        ),
    )


@section
class Eval:
    random_draws: PosInt = Field(3, description="random subnetworks (same size per matrix) averaged for the baseline")
    batch_size: PosInt = Field(32, description="facts or ControlLM blocks per forward")
    device: Device = Field("auto", description=DEVICE)
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description=("weights' dtype while evaluating (bfloat16 halves memory on big models)")
    )
    controllm_ppl: Literal["token_mean", "batch_mean"] = Field(
        "token_mean",
        description=("token_mean: exp(mean token CE); batch_mean: mean over batches of exp(batch CE) (paper)"),
    )


RELEARN_POINTS = [
    {"scope": "masked", "lr": 1.0e-4, "steps": 50},
    {"scope": "masked", "lr": 1.0e-3, "steps": 50},
    {"scope": "whole", "lr": 1.0e-5, "steps": 50},
]


@section
class Relearn:
    """`evaluation.relearning`."""

    points: Annotated[list[dict[str, Any]], WithJsonSchema(free_form.RELEARN_POINTS)] = Field(
        default_factory=lambda: [dict(p) for p in RELEARN_POINTS],
        description="each {scope: masked | whole, lr, steps[, data]}",
    )
    data: RelearnData = Field(
        ["targetkg", "controlkg", "wikitext", "unknown"],
        description=("unknown: facts the original never knew (the control)"),
    )
    models: Annotated[
        list[Literal["original", "removed_held", "removed_free", "random_held"]],
        Field(json_schema_extra={"uniqueItems": True, "contains": {"const": "original"}}),
    ] = Field(
        ["original", "removed_held", "removed_free", "random_held"], description="held: removed weights stay exactly 0"
    )
    seeds: Seeds = Field([0, 1, 2], description="finetuning seeds")
    batch: PosInt = Field(16, description="facts (or text rows) per step")
    text_tokens: Annotated[int, Field(ge=2)] = Field(
        32, description="wikitext: ControlLM training blocks cut into rows of this many tokens"
    )
    dtype: ComputeDtype = Field(
        "auto", description="of the finetuning steps only (as train.dtype); every score is fp32"
    )


@section
class Robustness:
    """Removed, or only hidden? (`evaluation.robustness`)."""

    max_facts: PosInt = Field(100, description="per probe: at most this many facts (seeded sample) of a set")
    candidates: Annotated[int, Field(ge=2)] = Field(
        10, description="multiple choice: the true tail among this many tails of the relation"
    )
    suppressed_ratio: number(gt=1) = Field(
        10.0, description="a sentence counts as suppressed at PPL >= this x the original's"
    )
    in_context: Annotated[list[NonNegInt], UNIQUE] = Field(
        [0, 3, 8], description=("the query after k true facts of its relation (no shared head or tail)")
    )
    probe_l2: number(ge=0) = Field(
        1.0e-2, description="ridge of the linear multiple-choice probe on the final hidden state"
    )
    quantize_bits: Annotated[list[Literal[4, 8]], UNIQUE] = Field(
        [8, 4], description=("re-score after round-to-nearest per 32 weights (gguf Q8_0 / Q4_0); []: off")
    )
    relearn: Relearn = Field(
        default_factory=Relearn,
        description=(
            "Relearning (Deeb & Roger 2024; evaluation.relearning): each point finetunes the masked layers (masked) "
            "or every parameter (whole) with Adam for `steps`, on each `data`, for every model and seed, then "
            "scores held-out TargetKG facts. Chosen before any result was seen, not tuned."
        ),
    )
    bootstrap: PosInt = Field(1000, description="resamples of facts for the 95 % intervals")
    seed: NonNegInt = Field(0, description="seed of the probes' samples and draws")
    batch_size: PosInt = Field(64, description="sentences per forward")
    device: Device = Field("auto", description=DEVICE)


@section
class RandomMagnitude:
    bins: PosInt = Field(20, description="magnitude quantile bins per matrix; the mask's count per bin is drawn in it")
    sweep: Multiples = Field([0.25, 0.5, 1.0, 2.0, 4.0], description="multiples of the mask's per-matrix counts")


@section
class Attribution:
    signed: Annotated[list[bool], Field(min_length=1)] = Field(
        [False, True],
        description=("false: |w x grad| (the classic importance); true: -w x grad, the predicted loss rise"),
    )
    contrast: Annotated[list[number(ge=0)], Field(min_length=1)] = Field(
        [0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0], description="minus this x |w x grad| on ControlKG (0: target only)"
    )
    min_target_ratio: number(ge=1) = Field(10.0, description="TargetKG val PPL at least this x the original's")
    batch: PosInt = Field(32, description="facts per gradient pass")
    sweep: Multiples = Field([0.25, 0.5, 1.0, 2.0, 4.0], description="multiples of the mask's per-matrix counts")


@section
class Neurons:
    ig_steps: PosInt = Field(8, description="Riemann steps of the integral (Dai et al.: 20)")
    contrast: Annotated[list[number(ge=0)], Field(min_length=1)] = Field(
        [0.0, 0.5, 1.0, 1.5, 2.0, 4.0],
        description="minus this x the same score on as many ControlKG facts (0: Dai et al.'s)",
    )
    min_target_ratio: number(ge=1) = Field(10.0, description="TargetKG val PPL at least this x the original's")
    batch: PosInt = Field(32, description="facts per gradient pass")
    sweep: Multiples = Field(
        [0.25, 0.5, 1.0, 2.0, 4.0], description="x (the mask's weight count / the layer width) neurons"
    )


@section
class Unlearning:
    """GradDiff, and NPO's common fields (`method.unlearning`)."""

    steps: PosInt = Field(100, description="finetuning steps")
    lr: number(gt=0) = Field(1.0e-3, description="Adam's learning rate")
    warmup_frac: Fraction = Field(0.1, description="linear warm-up, then constant")
    lambda_forget: number(ge=0) = Field(1.0, description="weight of the forget term")
    lambda_controlkg: number(ge=0) = Field(1.0, description="weight of the ControlKG KL term")
    lambda_controllm: number(ge=0) = Field(1.0, description="weight of the ControlLM KL term")
    batch: Batch = Field(default_factory=Batch, description="per step")
    select_every: PosInt = Field(
        10, description="validate every this many steps; the checkpoint kept as train.select does"
    )
    min_target_ratio: number(ge=1) = Field(10.0, description="TargetKG val PPL at least this x the original's")


@section
class Npo(Unlearning):
    beta: number(gt=0) = Field(0.1, description="NPO's inverse temperature")


@section
class Rmu:
    """Representation misdirection (Li et al. 2024; `method.unlearning`)."""

    steps: PosInt = Field(100, description="finetuning steps")
    lr: number(gt=0) = Field(1.0e-3, description="Adam's learning rate")
    warmup_frac: Fraction = Field(0.1, description="linear warm-up, then constant")
    layer: PosInt = Field(
        1,
        description="the steered block, counted from the top of the masked ones: 1 = the "
        "model's last; at most mask.top_k_blocks (checked when the trainer starts)",
    )
    steering_coeff: number(gt=0) = Field(
        20.0, description="c, the target's norm: above the block's own hidden-state norm (tiny's last block: ~12)"
    )
    alpha: number(ge=0) = Field(
        100.0, description="weight of each retain MSE (each a mean over positions and hidden dimensions)"
    )
    batch: Batch = Field(default_factory=Batch, description="per step")
    select_every: PosInt = Field(
        10, description="validate every this many steps; the checkpoint kept as train.select does"
    )
    min_target_ratio: number(ge=1) = Field(10.0, description="TargetKG val PPL at least this x the original's")


@section
class Baselines:
    """Other removal methods (`method.baselines`; docs/BASELINES.md)."""

    device: Device = Field("auto", description=DEVICE)
    random_magnitude: RandomMagnitude = Field(
        default_factory=RandomMagnitude, description=("random weights of the same magnitudes as the mask's, per matrix")
    )
    attribution: Attribution = Field(
        default_factory=Attribution,
        description=(
            "weight x gradient of the TargetKG tail loss (first-order Taylor pruning). attribution and neurons try "
            "every listed setting on the validation sets and keep one as the mask's checkpoint is kept: TargetKG >= "
            "min_target_ratio x, then the least control damage"
        ),
    )
    neurons: Neurons = Field(
        default_factory=Neurons, description=("knowledge neurons: integrated gradients of the MLP neurons' activations")
    )
    graddiff: Unlearning = Field(
        default_factory=Unlearning,
        description=("gradient ascent on TargetKG + the mask's KL retain terms, every weight of the masked layers"),
    )
    npo: Npo = Field(
        default_factory=Npo,
        description=("negative preference optimisation (Zhang et al. 2024) + the same retain terms"),
    )
    rmu: Rmu = Field(
        default_factory=Rmu,
        description=(
            "RMU (representation misdirection; Li et al. 2024, the WMDP paper): at the output of one masked block, "
            "TargetKG hidden states (tail positions) -> steering_coeff x a fixed random unit vector, ControlKG (tail "
            "positions) and ControlLM (every position) hidden states -> the original's; loss = MSE_forget + alpha x "
            "(MSE_ControlKG + MSE_ControlLM). Only the masked layers at or below that block train. WMDP's Zephyr-7B "
            "values: block 7 of 32 (MLP down-projections of blocks 5-7 trained), c 6.5, alpha 1200, lr 5e-5, 150 "
            "steps of 4 forget + 4 retain texts."
        ),
    )


@section
class Bars:
    min_sparsity: Fraction = Field(0.98, description="sparsity at least this")
    min_target_ratio: number(ge=1) = Field(10.0, description="TargetKG test PPL at least this x the original's")
    max_random_share: number(ge=0) = Field(
        0.1, description="random removal's TargetKG PPL rise at most this share of the mask's"
    )
    max_controlkg_ratio: number(ge=1) = Field(1.10, description="ControlKG PPL ratio within [1 / this, this]")
    max_controllm_ratio: number(ge=1) = Field(1.05, description="ControlLM PPL ratio within [1 / this, this]")


@section
class Goals:
    """The removal goal of the search beyond the bars (issue 29; report.goals)."""

    min_suppressed: Fraction = Field(
        0.8, description="share of known sentences in held-out wordings suppressed, for train and for test facts"
    )
    max_recovered: Fraction = Field(
        0.2, description="relearning on unrelated text, and 4-bit rounding, each recover less than this share"
    )


@section
class Report:
    combine: Literal["union", "intersection", "majority"] = Field(
        "majority", description=("how a target's seed masks are combined for the between-target overlap")
    )
    top_n: PosInt = Field(10, description='rows in the "densest heads" / "most masked neurons" tables')
    dpi: Annotated[int, Field(ge=30, le=600)] = Field(120, description="resolution of the PNG figures")
    bootstrap: PosInt = Field(
        1000, description="resamples (seeds and facts) for the intervals of the search's comparison across seeds"
    )
    bars: Bars = Field(
        default_factory=Bars,
        description=(
            "the paper's claim as numbers: each run's test-set result is checked against these. The control bars "
            "are two-sided: ControlKG and ControlLM ratios within [1 / bar, bar] (evaluation.bars)"
        ),
    )
    goals: Goals = Field(
        default_factory=Goals,
        description="what a removal must also show on the robustness probes (report.goals; snakemake sweep_robustness)",
    )


@section
class Sweep:
    """The search on validation (docs/SEARCH.md; `method.sweep`)."""

    points: Annotated[dict[str, dict[str, Any]], WithJsonSchema(free_form.SWEEP_POINTS)] = Field(
        {}, description="point name -> {method, set: a params overlay}"
    )
    robustness: list[str] = Field(
        [], description="points (or 'preset', the run's own mask) through robustness and the goal table: sweep_goals"
    )
    choose_by: Literal["damage", "wordings", "relearning"] = Field(
        "damage",
        description="points meeting every bar: least damage, most val-wording sentences suppressed, least relearned",
    )
