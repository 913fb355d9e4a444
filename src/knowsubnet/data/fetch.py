"""Fetch the raw datasets into data/raw/: copy from a local mirror, or download the public releases.

Every file is checked against the sha256 published with the local mirror (../shared/data/README.md),
whichever way it came, so a run with a mirror and a run without one read the same bytes. The
output folder is built next to its final place and renamed in one step: a killed or failed fetch
leaves the previous data/raw (or nothing), never a half-filled one.

Downloads go through pooch (streamed to a temporary file, retried, the sha256 checked before the
file is kept). What is this module's own: several origins per file tried in order, and the
origins that serve the file inside an archive or as Hugging Face parquet rows, whose published
sha256 is that of the file rebuilt from them (pooch checks what it downloaded: the archive).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowsubnet import __version__
from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import atomic_path, sha256_file, write_json
from knowsubnet.core.progress import progress_bar
from knowsubnet.core.provenance import stamp

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds without data before a download attempt is given up
ATTEMPTS = 3  # per URL (pooch retries every failure, waiting 1 s, then 2 s)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Origin:
    """One public place a file can be had, and how to turn what is served into the file.

    kind: `file` (the bytes as served), `zip` (member `member` of a zip archive), `tar_gz` (member
    `member` of a gzipped tar archive), `hf_wikitext`
    (a Hugging Face `wikitext` parquet split, rebuilt into the original .raw text), `hf_csqa`
    (a Hugging Face `commonsense_qa` parquet split, rebuilt into the original jsonl lines).
    The rebuilt files are accepted only if their sha256 matches the original's.
    """

    url: str
    kind: str = "file"
    member: str | None = None


@dataclass(frozen=True)
class RawFile:
    path: str  # relative to data/raw/ and to the mirror
    sha256: str | None  # None: no published checksum; the manifest records what was fetched
    origins: tuple[Origin, ...]  # tried in order


_CSQA_S3 = "https://s3.amazonaws.com/commensenseqa"  # sic: the official bucket's spelling
_CSQA_GH = (
    "https://raw.githubusercontent.com/shizhediao/active-prompt/6d3dacdce1bcb39268431f434d31dbfeda5c1eff/dataset/CSQA"
)
_CSQA_HF = "https://huggingface.co/datasets/tau/commonsense_qa/resolve/main/data"
_WIKI_ZIP = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip"
_WIKI_HF = "https://huggingface.co/datasets/Salesforce/wikitext/resolve/main/wikitext-2-raw-v1"
_WIKI_GH = "https://raw.githubusercontent.com/DRAGNLabs/LLMHumanModeling/67cb89ec83ca316877b9101d6b8b1227aa7cf8e4/data"
_KS_GH = (
    "https://raw.githubusercontent.com/AmitVaisman/236004_transformers_project/"
    "d624700db9bb6f0b3c64a4501cd804a39526c1bf/know_subnet/data"
)

_WORDNET_TGZ = "https://wordnetcode.princeton.edu/3.0/WNdb-3.0.tar.gz"  # the canonical database
_WORDNET_NLTK = "https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/wordnet.zip"

_KNOW_SUBNET_SUMS = {
    "conceptnet_lama/controlkg_train_best_format.json": (
        "1547427d2df01c9953221e34d339a6424583200053bacee97314372d7563e1cb"
    ),
    "conceptnet_lama/controlkg_val_best_format.json": (
        "16adfce0a66bc575b4af61c02620c118b6af5faf4f49c044139410a2345ad402"
    ),
    "conceptnet_lama/targetkg/best_format/fruit_best_format.json": (
        "99bc74dd46ff891bf90eae8a1e257cc8577489834f90b8f10410b01b2b5b9a19"
    ),
    "conceptnet_lama/targetkg/best_format/sun_best_format.json": (
        "feb53b9bfa651d21c6d3f99076d5040b3b6dc6ebb43cffc8dc263ce3705ea0a2"
    ),
    "conceptnet_lama/targetkg/best_format/swimming_best_format.json": (
        "020979d28aed771c3ec19f5fe45b1300a202708524b00c8b8f7d7f09781af1c2"
    ),
    "conceptnet_lama/targetkg/fruit.jsonl": "6da8e448acdcbae41ac0851d03f3e92106e26fedb58634310a94aad2d4714525",
    "conceptnet_lama/targetkg/sun.jsonl": "c0c54a02b1a571ff99d2c04e8936cdfcefc46d9782e614e4480a12860b57f3d3",
    "conceptnet_lama/targetkg/swimming.jsonl": "67baeedad4e06a460433e81b003d311870982713c51320917a879d217863a183",
    "csqa/csqa1_targetkg_best_format.json": "fcc2a7db4a8ddd0d6b975e16d48086660c0afcd52e486253e787934673f056a1",
    "csqa/csqa2_targetkg_best_format.json": "2b26542b70eeecb52de7b02a5ff0c22d2c344b256f1b07ba97ba29c343775701",
    "csqa/csqa_controlkg_best_format_train.json": "07559ee91a52385b7a782401f966bfa2b3467c1752d12ff1dc592c26cfd5f376",
    "csqa/csqa_controlkg_best_format_val.json": "300801c4c3e42e319f29d21c63d596a1f31e1940cc05c5fb600e17c743d732fa",
    "csqa/csqa_targetkg_best_format.json": "babbd2e658a1bdc2ab41e4b5af9b4530e2f13a666a195adb18613733112d5709",
    # The paper's WordNet lists (file names contain ( ' ): URL-quoted when downloaded.
    "wordnet/controlkg/controlkg_val_best_format.json": (
        "a8cd3ba0ac62fd7c497940e0c8750ae145ba2c39b3d58419b04d05376413d85b"
    ),
    "wordnet/targetkg/Synset('building.n.01')_best_format.json": (
        "c5eeaf554e1120f08500e99ea64432c24d98cbd65abca8295999371b8bfbacd1"
    ),
    "wordnet/targetkg/Synset('change.n.01')_best_format.json": (
        "1573f55e5540170d5b68fc56c76f2f66b8d1689723ba3f26d1064f4d031fd624"
    ),
    "wordnet/targetkg/Synset('communication.n.02')_best_format.json": (
        "2958e2dedadd9961ec6614937a8d7179bcb8166aed55852fe0870e61b3994168"
    ),
    "wordnet/targetkg/Synset('location.n.01')_best_format.json": (
        "b10da5981cf6654122529009a938f23ca963459ac60ad520c5401282ecd0d642"
    ),
    "wordnet/targetkg/Synset('magnitude.n.01')_best_format.json": (
        "e20a645768edbe3c9cb1ca72d63e3faca4f356f6e00d3da1e4d77accbe724f32"
    ),
    "wordnet/targetkg/Synset('representation.n.02')_best_format.json": (
        "2b1fb9c895f27021adf9cbacb9efa0d4fd4beffc3d86b17fc453def31583c5b1"
    ),
    "wordnet/targetkg/Synset('statement.n.01')_best_format.json": (
        "48dc86ec68e8135cd25ce132e64b5250bcfa00168b8cc02ed888a31c0c017ba4"
    ),
}

RAW_FILES: tuple[RawFile, ...] = (
    RawFile(
        "commonsenseqa/train_rand_split.jsonl",
        "58ffa3c8472410e24b8c43f423d89c8a003d8284698a6ed7874355dedd09a2fb",
        (
            Origin(f"{_CSQA_S3}/train_rand_split.jsonl"),
            Origin(f"{_CSQA_GH}/train_rand_split.jsonl"),
            Origin(f"{_CSQA_HF}/train-00000-of-00001.parquet", "hf_csqa"),
        ),
    ),
    RawFile(
        "commonsenseqa/dev_rand_split.jsonl",
        "3210497fdaae614ac085d9eb873dd7f4d49b6f965a93adadc803e1229fd8a02a",
        (
            Origin(f"{_CSQA_S3}/dev_rand_split.jsonl"),
            Origin(f"{_CSQA_GH}/dev_rand_split.jsonl"),
            Origin(f"{_CSQA_HF}/validation-00000-of-00001.parquet", "hf_csqa"),
        ),
    ),
    RawFile(
        "wikitext-2-raw/wiki.valid.raw",
        "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
        (
            Origin(_WIKI_ZIP, "zip", "wikitext-2-raw/wiki.valid.raw"),
            Origin(f"{_WIKI_HF}/validation-00000-of-00001.parquet", "hf_wikitext"),
            Origin(f"{_WIKI_GH}/wiki.valid.raw"),
        ),
    ),
    RawFile(
        "wikitext-2-raw/wiki.test.raw",
        "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
        (
            Origin(_WIKI_ZIP, "zip", "wikitext-2-raw/wiki.test.raw"),
            Origin(f"{_WIKI_HF}/test-00000-of-00001.parquet", "hf_wikitext"),
            Origin(f"{_WIKI_GH}/wiki.test.raw"),
        ),
    ),
    *(
        RawFile(f"know_subnet_derived/{rel}", digest, (Origin(f"{_KS_GH}/{urllib.parse.quote(rel)}"),))
        for rel, digest in sorted(_KNOW_SUBNET_SUMS.items())
    ),
)

# Fetched only when the params need them (fetch_data's `optional` argument names which).
# WordNet 3.0 noun database (triplets source `wordnet`): the sums are those of the mirror's copy
# (Debian wordnet-base 1:3.0-37, built from Princeton's release). Princeton's WNdb-3.0.tar.gz is
# canonical, NLTK's wordnet corpus the fallback.
WORDNET_FILES: tuple[RawFile, ...] = tuple(
    RawFile(
        f"wordnet-3.0/{name}",
        digest,
        (Origin(_WORDNET_TGZ, "tar_gz", f"dict/{name}"), Origin(_WORDNET_NLTK, "zip", f"wordnet/{name}")),
    )
    for name, digest in (
        ("data.noun", "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2"),
        ("index.noun", "a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04"),
    )
)
# WikiText-2 train (the paper's ControlLM training text; controllm.train_text: train). Not in the
# local mirror and no checksum was published with it: the manifest records the sha256 fetched.
WIKI_TRAIN = RawFile(
    "wikitext-2-raw/wiki.train.raw",
    None,
    (
        Origin(_WIKI_ZIP, "zip", "wikitext-2-raw/wiki.train.raw"),
        Origin(f"{_WIKI_HF}/train-00000-of-00001.parquet", "hf_wikitext"),
    ),
)
OPTIONAL_FILES: dict[str, tuple[RawFile, ...]] = {"wordnet": WORDNET_FILES, "wiki_train": (WIKI_TRAIN,)}

LAMA_DEST_STEM = "lama/conceptnet_test"  # + .jsonl or .parquet, as triplets.find_lama_file expects


# -- rebuilding original files from Hugging Face rows -------------------------------------------


def wikitext_raw_from_rows(texts: Iterable[str]) -> str:
    """The original .raw text from the HF `wikitext` rows: the HF loader turned each line into a
    row, keeping the newline, but emptied blank lines (in the original: a single space)."""
    return "".join(text if text else " \n" for text in texts)


def csqa_jsonl_from_rows(rows: Iterable[dict[str, Any]]) -> str:
    """The original CommonsenseQA jsonl from the HF `commonsense_qa` rows (same key order and
    separators as the S3 release, so the sha256 check can confirm the rebuild)."""
    lines = []
    for row in rows:
        choices = row["choices"]
        record = {
            "answerKey": row["answerKey"],
            "id": row["id"],
            "question": {
                "question_concept": row["question_concept"],
                "choices": [{"label": label, "text": text} for label, text in zip(choices["label"], choices["text"])],
                "stem": row["question"],
            },
        }
        lines.append(json.dumps(record) + "\n")
    return "".join(lines)


# -- downloading --------------------------------------------------------------------------------


class _FetchFailed(Exception):
    """One origin did not give the file; the next origin is tried."""


class _Downloader:
    """pooch's downloads into one cache folder: each URL is downloaded at most once per fetch (the
    WikiText zip serves two files), retried ATTEMPTS times in all, and a `file` origin's sha256
    checked by pooch before the file is kept."""

    def __init__(self, cache_dir: Path, timeout: float):
        import pooch

        self.cache_dir = cache_dir
        self.http = pooch.HTTPDownloader(
            timeout=timeout, progressbar=False, headers={"User-Agent": f"knowsubnet/{__version__}"}
        )

    def get(self, url: str, sha256: str | None = None) -> Path:
        import pooch
        import requests

        if url.startswith("file://"):  # a local origin (pooch has no file:// downloader): read in place
            path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
            if not path.is_file():
                raise _FetchFailed(f"no such file {path}")
            if sha256 and (got := sha256_file(path)) != sha256:
                raise _FetchFailed(f"sha256 mismatch: expected {sha256}, got {got}")
            return path
        name = hashlib.md5(url.encode()).hexdigest()
        store = pooch.create(
            path=self.cache_dir, base_url="", registry={name: sha256}, urls={name: url}, retry_if_failed=ATTEMPTS - 1
        )
        try:
            return Path(store.fetch(name, downloader=self.http))
        except requests.exceptions.HTTPError as err:
            response = err.response
            raise _FetchFailed(
                f"HTTP {response.status_code} {response.reason}" if response is not None else str(err)
            ) from None
        except requests.exceptions.RequestException as err:
            raise _FetchFailed(f"{type(err).__name__}: {err}") from None
        except ValueError as err:  # pooch: the sha256 of what was served is not the known one
            found = re.search(r"expected (?:\w+:)?(\w+) but got (\w+)", str(err))
            raise _FetchFailed(
                f"sha256 mismatch: expected {found.group(1)}, got {found.group(2)}" if found else str(err)
            ) from None


def _materialise(origin: Origin, cached: Path, dest: Path) -> None:
    """Turn what `origin` served (at `cached`) into the file at `dest`."""
    try:
        if origin.kind == "file":
            shutil.copyfile(cached, dest)
        elif origin.kind == "zip":
            with zipfile.ZipFile(cached) as archive, archive.open(origin.member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
        elif origin.kind == "tar_gz":
            with tarfile.open(cached, "r:gz") as archive:
                src = archive.extractfile(origin.member)
                if src is None:
                    raise KeyError(origin.member)
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        elif origin.kind == "hf_wikitext":
            import pyarrow.parquet as pq

            texts = pq.read_table(cached, columns=["text"]).column("text").to_pylist()
            dest.write_bytes(wikitext_raw_from_rows(texts).encode("utf-8"))
        elif origin.kind == "hf_csqa":
            import pyarrow.parquet as pq

            dest.write_bytes(csqa_jsonl_from_rows(pq.read_table(cached).to_pylist()).encode("utf-8"))
        else:
            raise AssertionError(f"unknown origin kind {origin.kind!r}")
    except (zipfile.BadZipFile, tarfile.TarError, KeyError, OSError, ValueError) as err:
        raise _FetchFailed(f"cannot unpack ({type(err).__name__}: {err})") from None


def _download(spec: RawFile, dest: Path, verify: bool, downloader: _Downloader) -> dict:
    """Try each origin of `spec` until one gives a file with the expected sha256."""
    failures = []
    for origin in spec.origins:
        try:  # a file served as it is: pooch checks its sha256; a rebuilt one: checked below
            known = spec.sha256 if verify and origin.kind == "file" else None
            _materialise(origin, downloader.get(origin.url, known), dest)
        except _FetchFailed as err:
            failures.append(f"{origin.url}: {err}")
            continue
        actual = sha256_file(dest)
        if verify and spec.sha256 is not None and actual != spec.sha256:
            failures.append(f"{origin.url}: sha256 mismatch for {spec.path}: expected {spec.sha256}, got {actual}")
            dest.unlink()
            continue
        log.info("downloaded %s from %s", spec.path, origin.url)
        return _entry(dest, actual, origin.url, spec, verify)
    raise InputError(
        f"could not download {spec.path} (params key 'data.mirror' is null, so the "
        f"public sources were tried): " + "; ".join(failures) + ". Set 'data.mirror' to a local copy of the data."
    )


# -- the mirror ---------------------------------------------------------------------------------


def _check_mirror(mirror: str | os.PathLike) -> Path:
    path = Path(mirror)
    if not path.is_dir():
        where = path if path.is_absolute() else f"{path} (from {Path.cwd()})"
        raise InputError(
            f"params key 'data.mirror': the mirror folder {where} does not exist; set "
            f"data.mirror: null to download the datasets (`snakemake --config data__mirror=null`, "
            f"`make params SET=data.mirror=null`), or point it at a copy laid out as ../shared/data"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"params key 'data.mirror': the mirror folder {path} is not readable")
    return path


def _copy_verified(src: Path, dest: Path) -> str:
    """Copy src to dest and return the sha256 of the bytes copied (one pass)."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(_CHUNK):
            digest.update(block)
            fout.write(block)
    return digest.hexdigest()


def _from_mirror(spec: RawFile, mirror: Path, dest: Path, verify: bool) -> dict:
    src = mirror / spec.path
    if not src.is_file():
        hint = (
            " (WikiText-2 train is not in the local mirror: set 'controllm.train_text: valid', "
            "or 'data.mirror: null' to download it)"
            if spec is WIKI_TRAIN
            else ""
        )
        raise InputError(f"params key 'data.mirror': {src} is missing from the mirror {mirror}{hint}")
    try:
        actual = _copy_verified(src, dest)
    except OSError as err:
        raise InputError(f"params key 'data.mirror': cannot read {src} ({err.strerror})") from None
    if verify and spec.sha256 is not None and actual != spec.sha256:
        raise InputError(
            f"{src}: sha256 mismatch: expected {spec.sha256}, got {actual} "
            f"(the mirror's copy differs from the published file)"
        )
    return _entry(dest, actual, str(src), spec, verify)


# -- the stage ----------------------------------------------------------------------------------


def _entry(dest: Path, sha: str, origin: str, spec: RawFile | None, verify: bool) -> dict:
    entry = {"sha256": sha, "bytes": dest.stat().st_size, "origin": origin}
    if spec is not None:
        entry["canonical"] = spec.origins[0].url
    entry["verified"] = bool(verify and spec is not None and spec.sha256 is not None)
    return entry


def _lama_dest(lama_path: str | os.PathLike) -> tuple[Path, str]:
    src = Path(lama_path)
    if not src.is_file():
        raise InputError(f"params key 'triplets.lama_path': no such file {src}")
    suffix = {".jsonl": ".jsonl", ".json": ".jsonl", ".parquet": ".parquet"}.get(src.suffix)
    if suffix is None:
        raise InputError(
            f"params key 'triplets.lama_path': expected a .jsonl or .parquet LAMA ConceptNet file, got {src}"
        )
    return src, LAMA_DEST_STEM + suffix


def optional_files(params: Params) -> list[str]:
    """Which OPTIONAL_FILES groups the params need: WordNet for triplets source `wordnet`,
    WikiText-2 train for `controllm.train_text: train`."""
    need = []
    if "wordnet" in params.triplets.sources:
        need.append("wordnet")
    if params.controllm.train_text == "train":
        need.append("wiki_train")
    return need


def fetch_data(
    out_dir: str | os.PathLike,
    mirror: str | os.PathLike | None,
    verify: bool = True,
    lama_path: str | os.PathLike | None = None,
    provenance: dict | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    optional: Iterable[str] = (),
) -> dict:
    """Fill `out_dir` (data/raw) with the raw datasets and a manifest; return the manifest.

    mirror: a folder with the layout of ../shared/data (relative paths: to the working
    directory), or None to download from the public sources. lama_path: an optional LAMA
    ConceptNet file (jsonl or parquet) copied to lama/ (it has no published checksum).
    optional: groups of OPTIONAL_FILES to fetch as well (see `optional_files`).
    """
    out_dir = Path(out_dir)
    mirror_dir = _check_mirror(mirror) if mirror is not None else None
    lama = _lama_dest(lama_path) if lama_path is not None else None
    files: dict[str, dict] = {}
    with atomic_path(out_dir) as tmp, tempfile.TemporaryDirectory(prefix=".fetch-cache.", dir=out_dir.parent) as cache:
        tmp.mkdir()
        downloader = _Downloader(Path(cache), timeout)
        unknown = [name for name in optional if name not in OPTIONAL_FILES]
        if unknown:
            raise ValueError(f"unknown optional file groups {unknown}")
        specs = RAW_FILES + tuple(spec for name in optional for spec in OPTIONAL_FILES[name])
        for spec in progress_bar(specs, desc="fetch_data", unit="file"):
            dest = tmp / spec.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if mirror_dir is not None:
                files[spec.path] = _from_mirror(spec, mirror_dir, dest, verify)
            else:
                files[spec.path] = _download(spec, dest, verify, downloader)
        if lama is not None:
            src, rel = lama
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                sha = _copy_verified(src, dest)
            except OSError as err:
                raise InputError(f"params key 'triplets.lama_path': cannot read {src} ({err.strerror})") from None
            files[rel] = _entry(dest, sha, str(src), None, verify)
        manifest: dict[str, Any] = {
            "mirror": None if mirror is None else str(mirror),
            "verify_checksums": bool(verify),
            "files": files,
        }
        if provenance is not None:
            manifest["provenance"] = provenance
        write_json(tmp / "manifest.json", manifest)
    log.info("fetched %d files into %s", len(files), out_dir)
    return manifest


def fetch_from_params(params: Params, out_dir: str | os.PathLike) -> dict:
    """The fetch_data stage: `fetch_data` into `out_dir` with params data.mirror,
    data.verify_checksums, triplets.lama_path and the optional files they need
    (`optional_files`), their values stamped into the manifest; returns the manifest."""
    lama_path = params.triplets.lama_path
    optional = optional_files(params)
    return fetch_data(
        out_dir,
        params.data.mirror,
        verify=params.data.verify_checksums,
        lama_path=lama_path,
        optional=optional,
        provenance=stamp({"data": params.section("data"), "triplets": {"lama_path": lama_path}, "optional": optional}),
    )
