"""Measuring what a subnetwork removed: `ablation` (original / removed / random / kept on the test
splits, with per-fact scores; the evaluate_ablation and combine_seeds stages), `bars` (the one
check of a run against params `report.bars`) and `robustness` (held-out facts and wordings, facts in
context, hidden-state readouts, quantization, relearning, specificity), with its `probes`,
`variants`, `robustness_stats`, `readouts`, `quantize`, `relearn` and `relearning` pieces; `export` writes the
remaining model as a Hugging Face directory with its model card. Scores come from
`knowsubnet.scoring`."""
