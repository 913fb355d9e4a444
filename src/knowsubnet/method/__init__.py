"""The method, top to bottom: `masking` (which weights a mask covers, how a mask is applied, mask
files), `samplers` (the trainable mask logits and the samplers), `objectives` (the four losses and
the sparsity schedule) and `training` (the trainer's step, validation-based checkpoint selection
and exact resume); `combination` (union / intersection / majority of seed masks). The other ways of
removing the same knowledge, for comparison: `edits` (any method's removal: a mask or new weights,
applied and drawn at random alike), `attribution` (pruning by attribution, knowledge neurons,
magnitude-matched random), `unlearning` (GradDiff, NPO, RMU) and `baselines` (the remove_baseline
stage), every method declared once in `registry`."""
