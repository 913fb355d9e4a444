"""The method, top to bottom: `masking` (which weights a mask covers, the samplers and how a mask is
applied), `objectives` (the four losses and the sparsity schedule) and `training` (the trainer's
step, validation-based checkpoint selection and exact resume); `combination` (union / intersection /
majority of seed masks)."""
