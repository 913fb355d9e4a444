"""From results to a report: mask `analysis` (seed combinations, overlap, structure), the
precision `tradeoff`, and `build` (tables, figures and report.md)."""
