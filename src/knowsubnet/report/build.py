"""The report: `build_report` writes report.md from its sections, in this order, each a function
that returns its Markdown and the files it wrote (`format.Section`):

    title                           (here)
    Summary                         summary.summary_section        metrics files: each run's verdict
    How to read this                (here)
    Ablation                        ablation.ablation_section      metrics files (required)
    Precision                       tradeoff.precision_section     metrics; meta.json (trade-off)
    Removed, or only hidden?        robustness.robustness_section  robustness results (if run)
    Other ways of removing ...      comparison.comparison_section  baselines' results (if run)
    Seed combinations               ablation.combinations_section  combined masks' metrics (if any)
    Structure of the subnetworks    structure.structure_section    mask files (via masks.analyse_masks)
    Overlap                         overlap.overlap_section        mask files
    CommonsenseQA after finetuning  csqa.csqa_section              finetune_csqa results (if run)
    Mask training                   training.training_section      train_log.csv files
    Provenance                      provenance.provenance_section  metrics; models' provenance.json

Outputs under `out_dir`: report.md, tables/ (CSV + Markdown) and figures/ (PNG); each section's
module lists its files. Figures use matplotlib's object API with the Agg canvas (no pyplot, no
global backend switch). Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from knowsubnet.core.config import Params
from knowsubnet.core.io import write_text
from knowsubnet.evaluation.ablation_results import AblationMetrics
from knowsubnet.report.ablation import ablation_section, combinations_section, load_metrics
from knowsubnet.report.comparison import comparison_section
from knowsubnet.report.csqa import csqa_section
from knowsubnet.report.format import Section
from knowsubnet.report.masks import analyse_masks
from knowsubnet.report.overlap import overlap_section
from knowsubnet.report.provenance import provenance_section
from knowsubnet.report.robustness import robustness_section
from knowsubnet.report.structure import structure_section
from knowsubnet.report.summary import summary_section
from knowsubnet.report.tradeoff import precision_section
from knowsubnet.report.training import training_section

log = logging.getLogger(__name__)

HOW_TO_READ = """\
## How to read this

- **Removed** is the model with the discovered subnetwork zeroed; **random** zeroes a random
  subnetwork with exactly as many weights in every masked matrix (mean over several draws);
  **kept** keeps only the subnetwork in the masked layers.
- **ΔPPL** = PPL(variant) − PPL(original). PPL of a fact set = exp(mean over facts of the mean
  cross-entropy of the fact's tail tokens); ControlLM PPL is over every token of WikiText-2 blocks.
- Success looks like: a large **TargetKG ΔPPL removed**, ControlKG and ControlLM ΔPPL near zero,
  and the random baseline near zero everywhere.
- **± std** is the sample standard deviation over mask seeds (left out for a single seed).
- **Sparsity** is the share of the masked layers' weights *not* in the subnetwork.
- **Density** is the share of a block's (matrix's, head's) mask entries in the subnetwork; **share** is
  the part of the whole subnetwork that lies there.
- **Jaccard** = |A ∩ B| / |A ∪ B| of two subnetworks over all masked layers (1 = identical).
"""


def title_section(records: list[AblationMetrics]) -> Section:
    """Title, and the models and targets of the per-seed runs."""
    runs = [r for r in records if not r.combination]
    return Section.from_lines(
        [
            "# knowsubnet report",
            "",
            "Knowledge-critical subnetworks (Bayazit et al., EMNLP 2024): what each model loses when "
            "the subnetwork for a target is removed.",
            "",
            f"Models: {', '.join(sorted({r.model for r in runs}))}. "
            f"Targets: {', '.join(sorted({r.target for r in runs}))}.",
            "",
        ]
    )


def build_report(
    metrics_paths: Sequence[str | Path],
    mask_paths: Sequence[str | Path] = (),
    log_paths: Sequence[str | Path] = (),
    *,
    params: Params,
    out_dir: str | Path = "results",
    models_root: str | Path | None = None,
    meta_paths: Sequence[str | Path] = (),
    csqa_paths: Sequence[str | Path] = (),
    robustness_paths: Sequence[str | Path] = (),
    baseline_meta_paths: Sequence[str | Path] = (),
    baseline_metrics_paths: Sequence[str | Path] = (),
    baseline_robustness_paths: Sequence[str | Path] = (),
) -> dict[str, Path]:
    """Write every table, figure and `report.md`; return {name: path} of what was written.

    Sections whose inputs are not given are left out; `models_root` (config.json for the head
    structure, provenance.json) defaults to <out_dir>/models.
    """
    settings = params.report
    out_dir = Path(out_dir)
    tables, figures, dpi = out_dir / "tables", out_dir / "figures", settings.dpi
    models_root = Path(models_root) if models_root is not None else out_dir / "models"
    records = load_metrics(metrics_paths)
    bars = dataclasses.asdict(settings.bars)

    # the verdicts first: what a reader looks for, explained by the sections below
    sections = [
        title_section(records),
        summary_section(records, bars, tables),
        Section(HOW_TO_READ),
        ablation_section(records, tables, figures, dpi),
        precision_section(records, meta_paths, bars, tables, figures, dpi),
        robustness_section(robustness_paths, tables, figures, dpi) if robustness_paths else None,
        comparison_section(
            records,
            meta_paths,
            robustness_paths,
            baseline_metrics_paths,
            baseline_meta_paths,
            baseline_robustness_paths,
            bars,
            tables,
            figures,
            dpi,
        ),
        combinations_section(records, tables),
    ]
    if mask_paths:
        masks = analyse_masks(mask_paths, combine=settings.combine, models_root=models_root)
        sections += [
            structure_section(masks, settings.top_n, tables, figures, dpi),
            overlap_section(masks, settings.combine, tables, figures, dpi),
        ]
    sections += [
        csqa_section(csqa_paths, tables, figures, dpi) if csqa_paths else None,
        training_section(log_paths, tables, figures, dpi) if log_paths else None,
        provenance_section(records, dataclasses.asdict(params), models_root),
    ]
    sections = [section for section in sections if section is not None]

    report = out_dir / "report.md"
    write_text(report, "\n".join(section.markdown for section in sections))
    written = {name: path for section in sections for name, path in section.files.items()} | {"report": report}
    log.info("wrote %d files; report: %s", len(written), report)
    return written
