"""From results to a report: mask `analysis` (seed combinations, overlap, structure); one module
per report section (`summary`, `ablation`, `tradeoff`, `robustness`, `structure` and `overlap` over
`masks.analyse_masks`, `csqa`, `training`, `provenance`), each returning a `format.Section`; and
`build`, which writes report.md from them in order."""
