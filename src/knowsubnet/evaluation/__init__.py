"""Measuring what a subnetwork removed: `ablation` (original / removed / random / kept on the test
splits; the evaluate_ablation and combine_seeds stages) and `robustness` (held-out facts,
paraphrases, multiple choice, relearning, specificity), with its `probes` and `relearn` pieces;
`export` writes the remaining model as a Hugging Face directory. Scores come from `knowsubnet.scoring`."""
