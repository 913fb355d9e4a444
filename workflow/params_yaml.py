"""Write params.yaml, the one file DVC reads and Snakemake starts from: config/base.yaml + the local
data mirror (config/mirror-local.yaml) + an optional preset + optional overlays (config/overlays/),
merged in that order, + optional overrides.

    python workflow/params_yaml.py [--preset demo] [--overlay demo-baselines ...] [--set train.steps=10 ...]
    make params PRESET=demo OVERLAY=demo-baselines SET="train.steps=10 run.seeds=[0]"

`--set KEY=VALUE` (repeatable) changes one key: KEY dotted (train.batch.targetkg), VALUE YAML.

tests/workflow/test_params.py checks that the committed params.yaml is what this writes without a preset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from knowsubnet.core import config  # noqa: E402
from knowsubnet.core.errors import InputError  # noqa: E402
from knowsubnet.core.io import write_text  # noqa: E402

HEADER = """\
# params.yaml: what DVC reads (`dvc repro`) and what Snakemake starts from (Snakefile `configfile:`).
# Written by `make params{preset_arg}` = config/base.yaml + config/mirror-local.yaml{preset_part}.
# Every key is documented, with its default, in config/base.yaml. Edit this file for a `dvc repro`
# experiment; `make params` writes it anew. Snakemake presets are overlays on it:
#   snakemake --cores 2 --configfile config/presets/demo.yaml
"""


class _Dumper(yaml.SafeDumper):
    """Leaf lists and small leaf mappings on one line, as the hand-written files have them."""


def _leaf(value) -> bool:
    return not isinstance(value, (dict, list))


_Dumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=all(map(_leaf, v)))
)
_Dumper.add_representer(
    dict,
    lambda d, v: d.represent_mapping(
        "tag:yaml.org,2002:map", v.items(), flow_style=bool(v) and len(v) <= 5 and all(map(_leaf, v.values()))
    ),
)


def sources(preset: str | None, overlays: list[str] | None = None) -> list[Path]:
    files = [ROOT / "config" / "base.yaml", ROOT / "config" / "mirror-local.yaml"]
    if preset:
        files.append(ROOT / "config" / "presets" / f"{preset}.yaml")
    files += [ROOT / "config" / "overlays" / f"{name}.yaml" for name in overlays or []]
    for path in files:
        if not path.is_file():
            raise InputError(f"{path}: no such preset or overlay; see config/presets/ and config/overlays/")
    return files


def render(preset: str | None, sets: list[str] | None = None, overlays: list[str] | None = None) -> str:
    files = sources(preset, overlays)
    merged = config.apply_overrides(config.merge_files(files), sets or [])
    source = " + ".join(list(map(str, files)) + (["--set"] if sets else []))
    config.from_mapping(merged, ROOT / "config" / "params.schema.yaml", source=source)
    header = HEADER.format(
        preset_arg=(f" PRESET={preset}" if preset else "")
        + (f' OVERLAY="{" ".join(overlays)}"' if overlays else "")
        + (f' SET="{" ".join(sets)}"' if sets else ""),
        preset_part=(f" + config/presets/{preset}.yaml" if preset else "")
        + "".join(f" + config/overlays/{name}.yaml" for name in overlays or []),
    )
    return header + yaml.dump(merged, Dumper=_Dumper, sort_keys=False, width=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a preset of config/presets/ (default: none, the tiny base)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one key, e.g. train.steps=10 or 'run.seeds=[0]' (repeatable; VALUE is YAML)",
    )
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="NAME",
        help="an overlay of config/overlays/ merged after the preset (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args(argv)
    write_text(args.out, render(args.preset or None, args.set, args.overlay))


if __name__ == "__main__":
    try:
        main()
    except InputError as err:  # one line naming the file or key, as the stage commands do
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
