"""Downstream CommonsenseQA (CSQA) finetuning: does the removed knowledge matter downstream?

Three versions of one model are finetuned alike (same seed, same data, same head initialisation,
same batch order) and scored on three groups of questions:

- variants: `original` (the pretrained model), `remaining` (the subnetwork's weights zero and held
  at zero through finetuning), `random` (a random subnetwork with the mask's per-matrix sizes
  removed, also held at zero);
- groups:   `removed` (CSQA questions linked to the removed target's facts), `kept` (questions
  linked to the other CSQA-linked facts: for csqa1 the csqa2 half and vice versa), `dev` (the
  CSQA dev split, or a seeded subsample of it).

Training questions are CSQA train minus every CSQA-linked question (both halves), so no evaluated
linked question is ever seen in finetuning.

Multiple choice is scored the standard way for causal LMs (as `GPT2DoubleHeadsModel` does): each
of the five "question + choice" sequences ends with the end-of-text token, the final hidden state
at that token goes through a linear choice head to one score, softmax over the five scores,
cross-entropy against the answer.

Modes (`csqa.modes`):
- `head`: only the choice head trains. The model is frozen, so the final hidden states are computed
  once per variant and the head is trained on them.
- `lora`: LoRA adapters (peft) on exactly the layers the mask covers, plus the head. The adapter's
  update is masked like the weight: W_eff = (W + s * B A) with the removed positions set to zero,
  so a removed weight stays exactly zero whatever the adapter learns.
- `full`: every weight trains except the removed ones: they are zeroed, their gradients are zeroed
  by a hook, and they are re-zeroed after every optimiser step.

In `head` and `lora` the blocks below the mask never change, so the hidden states entering the
first masked block are computed once for every question and shared by the three variants
(`models.top_blocks.TopBlocks`). Dropout is off in every mode (the model stays in eval mode) so the three
variants see the same deterministic forward. A run checkpoints every `checkpoint_every` steps and
after each variant, and resumes from its checkpoint (core.checkpoint).

Modules: `data` (CSQA files, linked questions, groups, token ids), `model` (choice head, masks,
LoRA, features), `stats` (bootstrap intervals), `finetune` (the finetuner and the stage).
"""

from knowsubnet.downstream.csqa.data import (GROUPS, LABELS, N_CHOICES, Encoded, Question, assemble_data,
                                             encode_questions, length_matched, question_groups, question_text,
                                             read_linked_facts, read_questions, siblings)
from knowsubnet.downstream.csqa.features import head_features
from knowsubnet.downstream.csqa.finetune import (CONTRASTS, DOD_PAIRS, VARIANTS, CSQAFinetuner, finetune_csqa,
                                                 run_stage, suppressed_facts, version_name)
from knowsubnet.downstream.csqa.model import (MODES, ChoiceHead, Variant, effective_weights, lora_effective_weight,
                                              packed_inputs, removed_weight_masks)
from knowsubnet.downstream.csqa.stats import (MDE_Z, bootstrap_ci, diff_of_diffs, group_accuracies, length_bias,
                                              paired_delta)

__all__ = [
    "GROUPS", "LABELS", "MODES", "N_CHOICES", "VARIANTS", "CONTRASTS", "DOD_PAIRS", "MDE_Z",
    "Question", "Encoded", "read_questions", "read_linked_facts", "question_groups", "assemble_data",
    "question_text", "encode_questions", "siblings", "length_matched",
    "ChoiceHead", "Variant", "removed_weight_masks", "lora_effective_weight", "effective_weights", "packed_inputs",
    "head_features",
    "bootstrap_ci", "paired_delta", "diff_of_diffs", "group_accuracies", "length_bias",
    "CSQAFinetuner", "finetune_csqa", "run_stage", "suppressed_facts", "version_name",
]
