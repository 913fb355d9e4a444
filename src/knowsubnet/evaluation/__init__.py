"""Measuring a model: `scoring` (tail-token PPL / rank / accuracy, ControlLM perplexity),
`verbalize` (each fact's best template, and how much better its head predicts its tail) and
`ablation` (original / removed / random / kept on the test splits)."""
