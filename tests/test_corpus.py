import json
from pathlib import Path

import pytest

from tinystories.data.corpus import read_stories, repair_mojibake
from tinystories.errors import TinyStoriesError
from tinystories.utils import resource_path

HF_ROWS = Path(__file__).parent / "data" / "valid_dev_hfrows.jsonl"  # as `datasets` returns them


def test_repair_matches_the_cleaned_validation_rows_exactly() -> None:
    clean = [json.loads(line)["text"] for line in resource_path("valid_dev.jsonl").open()]
    stories, stats = read_stories(str(HF_ROWS), dedupe=False)
    assert stories == [s.strip() for s in clean]
    assert stats.repaired == 7 and stats.read == 500
    assert not any("â€" in s for s in stories)


def test_repair_handles_each_known_pattern() -> None:
    assert repair_mojibake("Lilyâ€™s dog said â€œhiâ€ and left") == "Lily’s dog said “hi” and left"
    assert repair_mojibake("wait â€” now") == "wait — now"
    assert repair_mojibake("plain “quotes” stay") == "plain “quotes” stay"
    assert repair_mojibake("café") == "café"


def test_every_file_form_reads_the_same_stories(tmp_path: Path) -> None:
    stories = ["One day, Tom ran.", "Lily â€œsangâ€.", "One day, Tom ran.", "   ", "Sue hid."]
    txt = tmp_path / "c.txt"
    txt.write_text("<|endoftext|>\n".join(stories))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"story": s} for s in stories]))
    expected = ["One day, Tom ran.", "Lily “sang”.", "Sue hid."]
    for path, field in ((txt, "text"), (jsonl, "text"), (js, "story")):
        got, stats = read_stories(str(path), text_field=field)
        assert got == expected, path
        assert (stats.read, stats.repaired, stats.empty, stats.duplicates, stats.kept) == (5, 1, 1, 1, 3)


def test_datasets_folder_and_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="needs datasets: pip install -e '.[dev]'")
    ds = datasets.Dataset.from_dict({"text": ["A cat sat.", "A dog ran."]})
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    assert read_stories(str(tmp_path / "saved"))[0] == ["A cat sat.", "A dog ran."]
    assert read_stories(str(tmp_path / "rows.parquet"))[0] == ["A cat sat.", "A dog ran."]


def test_bundled_sample_is_real_tinystories() -> None:
    stories, stats = read_stories("bundled:train")
    assert stats.kept == 2317
    assert stories[0].startswith("One day, a little girl named Lily found a needle")


@pytest.mark.parametrize("content,needle", [
    ('{"text": "ok"}\n{"text": \n', "c.jsonl:2: not valid JSON"),
    ('{"body": "ok"}\n', "expected an object with a 'text' field"),
    ('{"text": 3}\n', "field 'text' is not a string"),
    ("\n\n", "holds no stories"),
])
def test_malformed_corpus_names_file_and_line(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(TinyStoriesError, match=needle.replace("(", r"\(")):
        read_stories(str(path))


def test_missing_and_unsupported_sources(tmp_path: Path) -> None:
    with pytest.raises(TinyStoriesError, match="corpus not found"):
        read_stories(str(tmp_path / "nope.txt"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(TinyStoriesError, match="unsupported corpus format"):
        read_stories(str(tmp_path / "x.csv"))
