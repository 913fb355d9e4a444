"""fetch_data: mirror copy, download path (pooch, against a local HTTP server), checksums, all-or-nothing output."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from knowsubnet.core.errors import InputError
from knowsubnet.data import fetch
from knowsubnet.data.fetch import Origin, RawFile, csqa_jsonl_from_rows, fetch_data, wikitext_raw_from_rows

CONTENTS = {
    "commonsenseqa/dev_rand_split.jsonl": b'{"id": "q1"}\n',
    "wikitext-2-raw/wiki.valid.raw": b" \n = Title = \n \n",
    "know_subnet_derived/conceptnet_lama/targetkg/fruit.jsonl": b'{"sub": "pear"}\n',
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def small_mirror(tmp_path, monkeypatch) -> Path:
    """A tiny mirror, and RAW_FILES pointed at it (real sums come from the real table)."""
    mirror = tmp_path / "mirror"
    for rel, data in CONTENTS.items():
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes(data)
    specs = tuple(
        RawFile(rel, sha(data), (Origin(f"https://example.invalid/{rel}"),)) for rel, data in CONTENTS.items()
    )
    monkeypatch.setattr(fetch, "RAW_FILES", specs)
    return mirror


def test_mirror_copy_writes_layout_and_manifest(small_mirror, tmp_path):
    out = tmp_path / "data" / "raw"
    manifest = fetch_data(out, small_mirror, provenance={"code_version": "test"})
    for rel, data in CONTENTS.items():
        assert (out / rel).read_bytes() == data
        entry = manifest["files"][rel]
        assert entry["sha256"] == sha(data) and entry["verified"] is True
        assert entry["origin"] == str(small_mirror / rel)
        assert entry["canonical"] == f"https://example.invalid/{rel}"
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["provenance"] == {"code_version": "test"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw"]  # no temp folders left


def test_relative_mirror_is_relative_to_the_working_directory(small_mirror, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = fetch_data("raw", "mirror")
    assert manifest["mirror"] == "mirror" and (tmp_path / "raw" / "manifest.json").is_file()


def test_checksum_mismatch_names_file_expected_and_actual_and_writes_nothing(small_mirror, tmp_path):
    rel = "wikitext-2-raw/wiki.valid.raw"
    (small_mirror / rel).write_bytes(b"tampered\n")
    out = tmp_path / "raw"
    out.mkdir()
    (out / "previous.txt").write_text("old run")
    with pytest.raises(InputError) as err:
        fetch_data(out, small_mirror)
    message = str(err.value)
    assert str(small_mirror / rel) in message
    assert f"expected {sha(CONTENTS[rel])}" in message and f"got {sha(b'tampered' + bytes([10]))}" in message
    assert [p.name for p in out.iterdir()] == ["previous.txt"]  # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "raw"]
    # verify=False accepts the file and says so in the manifest
    manifest = fetch_data(out, small_mirror, verify=False)
    assert manifest["files"][rel]["verified"] is False and not (out / "previous.txt").exists()


def test_missing_mirror_or_file_names_the_params_key(small_mirror, tmp_path):
    with pytest.raises(InputError, match=r"params key 'data.mirror': .*nowhere does not exist"):
        fetch_data(tmp_path / "raw", tmp_path / "nowhere")
    (small_mirror / "commonsenseqa" / "dev_rand_split.jsonl").unlink()
    with pytest.raises(InputError, match=r"'data.mirror': .*dev_rand_split.jsonl is missing"):
        fetch_data(tmp_path / "raw", small_mirror)
    assert not (tmp_path / "raw").exists()


def test_lama_file_is_copied_when_given(small_mirror, tmp_path):
    lama = tmp_path / "test.jsonl"
    lama.write_text('{"sub": "a"}\n')
    manifest = fetch_data(tmp_path / "raw", small_mirror, lama_path=lama)
    assert (tmp_path / "raw" / "lama" / "conceptnet_test.jsonl").read_text() == '{"sub": "a"}\n'
    assert manifest["files"]["lama/conceptnet_test.jsonl"]["verified"] is False
    with pytest.raises(InputError, match=r"'triplets.lama_path': no such file .*missing.jsonl"):
        fetch_data(tmp_path / "raw2", small_mirror, lama_path=tmp_path / "missing.jsonl")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; `flaky/<name>` answers 503 on its first request, then serves `<name>`."""

    failed: set[str]

    def do_GET(self):
        if self.path.startswith("/flaky/") and self.path not in self.failed:
            self.failed.add(self.path)
            self.send_error(503, "Service Unavailable")
            return
        self.path = self.path.removeprefix("/flaky")
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(a folder, its base URL): a local HTTP server in a thread stands in for the public sources."""
    monkeypatch.setattr(fetch, "ATTEMPTS", 2)  # one retry, and pooch's wait before it cut to nothing
    monkeypatch.setattr("pooch.core.time.sleep", lambda seconds: None)
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_Handler,), {"failed": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_path_tries_origins_in_order(served, tmp_path, monkeypatch):
    """mirror=None: a missing file and a wrong one are passed over for the next origin; a zip member
    is unpacked; a 503 is retried."""
    folder, url = served
    text = b" \n = Title = \n"
    with zipfile.ZipFile(folder / "wikitext.zip", "w") as archive:
        archive.writestr("wikitext-2-raw/wiki.valid.raw", text)
    (folder / "facts.jsonl").write_bytes(b'{"sub": "pear"}\n')
    (folder / "wrong.jsonl").write_bytes(b"not the file\n")
    specs = (
        RawFile(
            "wikitext-2-raw/wiki.valid.raw",
            sha(text),
            (Origin(f"{url}/gone.jsonl"), Origin(f"{url}/wikitext.zip", "zip", "wikitext-2-raw/wiki.valid.raw")),
        ),
        RawFile(
            "know_subnet_derived/x.jsonl",
            sha(b'{"sub": "pear"}\n'),
            (Origin(f"{url}/wrong.jsonl"), Origin(f"{url}/flaky/facts.jsonl")),
        ),
    )
    monkeypatch.setattr(fetch, "RAW_FILES", specs)
    manifest = fetch_data(tmp_path / "raw", None)
    assert (tmp_path / "raw" / "wikitext-2-raw" / "wiki.valid.raw").read_bytes() == text
    entry = manifest["files"]["know_subnet_derived/x.jsonl"]
    assert entry["origin"] == f"{url}/flaky/facts.jsonl" and entry["verified"] is True
    assert (tmp_path / "raw" / "know_subnet_derived" / "x.jsonl").read_bytes() == b'{"sub": "pear"}\n'
    assert manifest["mirror"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "served"]  # pooch's cache is gone


def test_download_checksum_mismatch_is_one_clear_line(served, tmp_path, monkeypatch):
    """Every origin wrong: one line naming the file, each origin and why it failed (the expected and
    the actual sum), and the way out; nothing is written."""
    folder, url = served
    (folder / "wrong.jsonl").write_bytes(b"not the file\n")
    with zipfile.ZipFile(folder / "wrong.zip", "w") as archive:
        archive.writestr("x.jsonl", b"not the file either\n")
    monkeypatch.setattr(
        fetch,
        "RAW_FILES",
        (
            RawFile(
                "know_subnet_derived/x.jsonl",
                sha(b"other"),
                (
                    Origin(f"{url}/wrong.jsonl"),
                    Origin(f"{url}/wrong.zip", "zip", "x.jsonl"),
                    Origin(f"{url}/gone.jsonl"),
                ),
            ),
        ),
    )
    with pytest.raises(InputError) as err:
        fetch_data(tmp_path / "raw", None)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("could not download know_subnet_derived/x.jsonl")
    assert (
        f"{url}/wrong.jsonl: sha256 mismatch: expected {sha(b'other')}, got {sha(b'not the file' + bytes([10]))}"
        in message
    )  # pooch's check
    assert f"got {sha(b'not the file either' + bytes([10]))}" in message  # the unpacked member's check
    assert f"{url}/gone.jsonl: HTTP 404" in message
    assert "Set 'data.mirror' to a local copy of the data." in message
    assert not (tmp_path / "raw").exists()
    # verify=False keeps the first file served, and says it was not checked
    manifest = fetch_data(tmp_path / "raw", None, verify=False)
    assert manifest["files"]["know_subnet_derived/x.jsonl"]["verified"] is False


def test_hf_rows_rebuild_the_original_files():
    assert wikitext_raw_from_rows([" = A = \n", "", " text . \n", ""]) == " = A = \n \n text . \n \n"
    row = {
        "id": "q1",
        "question": "Where?",
        "question_concept": "thing",
        "answerKey": "B",
        "choices": {"label": ["A", "B"], "text": ["here", "there"]},
    }
    assert csqa_jsonl_from_rows([row]) == (
        '{"answerKey": "B", "id": "q1", "question": {"question_concept": "thing", "choices": '
        '[{"label": "A", "text": "here"}, {"label": "B", "text": "there"}], "stem": "Where?"}}\n'
    )


def test_hf_rebuild_matches_published_sums(shared_data_mirror):
    """The HF fallbacks can only work if the rebuild is exact: check it on the real files by
    turning them into HF-style rows and back."""
    specs = {spec.path: spec for spec in fetch.RAW_FILES}
    raw = (shared_data_mirror / "wikitext-2-raw/wiki.valid.raw").read_text(encoding="utf-8")
    rows = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    rebuilt = wikitext_raw_from_rows(rows).encode("utf-8")
    assert sha(rebuilt) == specs["wikitext-2-raw/wiki.valid.raw"].sha256
    hf_rows = []
    for line in open(shared_data_mirror / "commonsenseqa/dev_rand_split.jsonl", encoding="utf-8"):
        record = json.loads(line)
        q = record["question"]
        hf_rows.append(
            {
                "id": record["id"],
                "question": q["stem"],
                "question_concept": q["question_concept"],
                "answerKey": record["answerKey"],
                "choices": {"label": [c["label"] for c in q["choices"]], "text": [c["text"] for c in q["choices"]]},
            }
        )
    assert sha(csqa_jsonl_from_rows(hf_rows).encode("utf-8")) == specs["commonsenseqa/dev_rand_split.jsonl"].sha256


def test_embedded_sums_cover_the_mirror_readme(shared_data_mirror):
    readme = (shared_data_mirror / "README.md").read_text(encoding="utf-8")
    for spec in fetch.RAW_FILES:
        assert spec.sha256 in readme, spec.path
        assert (shared_data_mirror / spec.path).is_file(), spec.path
