"""Measuring what a subnetwork removed: `ablation` (original / removed / random / kept on the test
splits, with per-fact scores; the evaluate_ablation and combine_seeds stages), `bars` (the one
check of a run against params `report.bars`) and `robustness` (held-out facts, paraphrases,
multiple choice, relearning, specificity), with its `probes` and `relearn` pieces; `export` writes
the remaining model as a Hugging Face directory. Scores come from `knowsubnet.scoring`."""
