"""The report section "Provenance": the models (from <models_root>/<model>/provenance.json), the
code versions and params digests of the evaluations, this report's code version, environment and
params."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from knowsubnet.core.io import read_json
from knowsubnet.core.provenance import code_version, environment
from knowsubnet.evaluation.ablation_results import AblationMetrics
from knowsubnet.report.format import Section, markdown_table


def _params_digest(params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def provenance_section(records: list[AblationMetrics], params: dict | None, models_root: Path | None) -> Section:
    """Where the numbers come from; `params` (a plain dict) is shown in full."""
    lines = ["## Provenance", ""]
    models = sorted({r.model for r in records})
    model_rows = []
    for model in models:
        prov_path = models_root / model / "provenance.json" if models_root else None
        prov = read_json(prov_path) if prov_path and prov_path.exists() else {}
        model_rows.append(
            {
                "Model": model,
                "Source": str(prov.get("source", "–")),
                "Revision / sha256": str(prov.get("revision") or prov.get("file_sha256") or "–"),
                "Parameters": f"{int(prov['parameters']):,}" if "parameters" in prov else "–",
            }
        )
    lines += ["Models:", "", markdown_table(pd.DataFrame(model_rows))]
    versions = sorted({(r.provenance or {}).get("code_version", "unknown") for r in records})
    digests = sorted(
        {
            _params_digest((r.provenance or {}).get("params"))
            for r in records
            if (r.provenance or {}).get("params") is not None
        }
    )
    env = environment()
    lines += [
        f"- Code version of the evaluations: {', '.join(f'`{v}`' for v in versions)}",
        f"- Code version of this report: `{code_version()}`",
        f"- Environment: python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"CPU {env['cpu']}",
        f"- Distinct params sets among the evaluations (sha256 prefix): "
        f"{', '.join(f'`{d}`' for d in digests) if digests else 'not recorded'}"
        + (" — more than one: runs used different params." if len(digests) > 1 else ""),
        f"- Metrics files: {len(records)}",
        "",
    ]
    if params is not None:  # keys sorted: the same text from params.yaml (DVC) and Snakemake's merged, sorted copy
        lines += [
            "<details><summary>Params of this report</summary>",
            "",
            "```yaml",
            yaml.safe_dump(params, sort_keys=True).rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return Section.from_lines(lines)
