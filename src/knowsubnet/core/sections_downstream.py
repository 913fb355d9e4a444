"""The params sections of the downstream stages: CommonsenseQA finetuning (`downstream.csqa`) and publishing a
run's model (`evaluation.export`). The types and conventions are `core.sections`'."""

from typing import Annotated, Literal

from pydantic import Field

from knowsubnet.core.sections import (
    DEVICE,
    UNIQUE,
    Closed,
    ComputeDtype,
    Device,
    NonNegInt,
    PosInt,
    Seeds,
    number,
    section,
)


class Epochs(Closed, total=False):
    head: PosInt
    lora: PosInt
    full: PosInt


class CsqaLr(Closed, total=False):
    lora: number(gt=0)
    full: number(gt=0)


class Lora(Closed, total=False):
    r: PosInt
    alpha: number(gt=0)


@section
class Csqa:
    modes: Annotated[list[Literal["head", "lora", "full"]], Field(min_length=1), UNIQUE] = Field(
        ["head", "lora", "full"],
        description="head: the choice head only; lora: adapters on the masked layers; full: every kept weight",
    )
    mask_seeds: Seeds | None = Field([0], description="which of run.seeds' masks are finetuned (null: all)")
    seeds: Seeds = Field([0], description="finetuning seeds: head and LoRA initialisation, batch order, random removal")
    train_questions: PosInt | None = Field(
        256,
        description="seeded subsample of CSQA train without the linked questions and their siblings (null: all 8,505)",
    )
    dev_questions: PosInt | None = Field(200, description="seeded subsample of CSQA dev (null: all 1,221)")
    epochs: Epochs = Field({"head": 10, "lora": 2, "full": 1}, description="epochs per mode")
    head_lr: number(gt=0) = Field(
        0.01, description="the choice head's learning rate in every mode (it starts from scratch)"
    )
    lr: CsqaLr = Field({"lora": 0.001, "full": 0.0003}, description="the model's: LoRA adapters, or every kept weight")
    batch_size: PosInt = Field(16, description="questions per step (x 5 choices)")
    eval_batch_size: PosInt = Field(32, description="questions per forward while evaluating")
    weight_decay: number(ge=0) = Field(0.0, description="AdamW's weight decay")
    lora: Lora = Field({"r": 8, "alpha": 16}, description="LoRA rank and alpha")
    max_length: Annotated[int, Field(ge=8)] = Field(
        64, description="tokens per question + choice, the question cut from the left (tiny context: 128)"
    )
    bootstrap: PosInt = Field(1000, description="resamples for the 95 % intervals")
    log_every: PosInt = Field(4, description="log a row every this many steps")
    checkpoint_every: PosInt = Field(20, description="write the resumable checkpoint every this many steps")
    device: Device = Field("auto", description=DEVICE)
    dtype: ComputeDtype = Field(
        "auto", description="head mode's cached features (as train.dtype); LoRA and full finetuning stay fp32"
    )


@section
class Export:
    """Publishing a run's model (the export_remaining stage, `evaluation.export`)."""

    keep: Literal["remaining", "subnetwork"] = Field(
        "remaining",
        description=(
            "remaining: the subnetwork's weights set to 0; subnetwork: only the subnetwork kept in the masked layers"
        ),
    )
    seeds: Annotated[list[NonNegInt], UNIQUE] = Field(
        [],
        description=(
            "the default target (snakemake, dvc repro) also exports these run.seeds' masks, every run model x target"
        ),
    )
