"""Downstream CommonsenseQA (CSQA) finetuning: does removing the subnetwork cost the questions that
need its facts?

For each finetuning seed, three versions of one model are finetuned alike (same data, head
initialisation and batch order) and scored on the question groups:

- variants: `original` (the pretrained model), `remaining` (the subnetwork's weights zero and held
  at zero through finetuning), `random` (a random removal with the mask's per-matrix sizes, drawn
  anew for each finetuning seed, also held at zero);
- groups (`data.GROUPS`): `removed_known` (questions linked to removed facts the model knew and the
  removal suppressed), `removed` (every question linked to the target's facts), `kept` (the other
  CSQA half's linked questions), `dev` (CSQA dev) and `dev_matched` (dev questions shaped like the
  linked ones: a one-word answer and a multi-word distractor).

Training questions are CSQA train minus every linked question (both halves) and every sibling of
one (same question concept, at least two shared choices), so nothing evaluated leaks into training.

Multiple choice is scored the standard way for causal LMs (as `GPT2DoubleHeadsModel` does): each
"question + choice" ends with the end-of-text token, the final hidden state there goes through a
linear choice head to one score, softmax over the five, cross-entropy against the answer. A
question's five sequences are packed into one (the question once; each choice sees the question and
itself only), the same computation for a third of the tokens.

Modes (`csqa.modes`):
- `head`: only the choice head trains. The model is frozen, so every version's features are
  computed once per question and cached (`features`); the heads of all seeds train on them.
- `lora`: LoRA adapters (peft) on exactly the layers the mask covers, plus the head. The adapter's
  update is masked like the weight: W_eff = (W + s * B A) with the removed positions set to zero,
  so a removed weight stays exactly zero whatever the adapter learns.
- `full`: every weight trains except the removed ones: they are zeroed, their gradients are zeroed
  by a hook, and they are re-zeroed after every optimiser step.
The head has its own learning rate (`csqa.head_lr`) in every mode.

In `head` and `lora` the blocks below the mask never change, so the hidden states entering the
first masked block are computed once for every question and shared by the versions
(`models.top_blocks.TopBlocks`). Dropout is off in every mode (the model stays in eval mode) so the
versions see the same deterministic forward. A run checkpoints (the cached features, then each
finished run; in lora / full every `checkpoint_every` steps) and resumes from its checkpoint
(core.checkpoint).

The claim is a difference of differences with a paired bootstrap interval over questions and
finetuning seeds, and its minimal detectable effect (`stats`).

Modules: `data` (CSQA files, linked questions, siblings, groups, packed token ids), `model` (choice
head, masks, LoRA, one finetuned version), `features` (head mode's cache), `stats` (paired
bootstrap, difference of differences, length check), `finetune` (the finetuner and the stage).
"""

from knowsubnet.downstream.csqa.data import (
    GROUPS,
    LABELS,
    N_CHOICES,
    Encoded,
    Question,
    assemble_data,
    encode_questions,
    length_matched,
    question_groups,
    question_text,
    read_linked_facts,
    read_questions,
    siblings,
)
from knowsubnet.downstream.csqa.features import head_features
from knowsubnet.downstream.csqa.finetune import (
    CONTRASTS,
    DOD_PAIRS,
    VARIANTS,
    CSQAFinetuner,
    finetune_csqa,
    run_stage,
    suppressed_facts,
    version_name,
)
from knowsubnet.downstream.csqa.model import (
    MODES,
    ChoiceHead,
    Variant,
    effective_weights,
    lora_effective_weight,
    packed_inputs,
    removed_weight_masks,
)
from knowsubnet.downstream.csqa.stats import MDE_Z, diff_of_diffs, group_accuracies, length_bias, paired_delta

__all__ = [
    "GROUPS",
    "LABELS",
    "MODES",
    "N_CHOICES",
    "VARIANTS",
    "CONTRASTS",
    "DOD_PAIRS",
    "MDE_Z",
    "Question",
    "Encoded",
    "read_questions",
    "read_linked_facts",
    "question_groups",
    "assemble_data",
    "question_text",
    "encode_questions",
    "siblings",
    "length_matched",
    "ChoiceHead",
    "Variant",
    "removed_weight_masks",
    "lora_effective_weight",
    "effective_weights",
    "packed_inputs",
    "head_features",
    "paired_delta",
    "diff_of_diffs",
    "group_accuracies",
    "length_bias",
    "CSQAFinetuner",
    "finetune_csqa",
    "run_stage",
    "suppressed_facts",
    "version_name",
]
