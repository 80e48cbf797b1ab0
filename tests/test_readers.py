import pytest

from fairstamp.data import iter_jsonl, read_sentences
from fairstamp.errors import DataError


def test_plain_text_lines_skip_blanks(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("The man was tall.\n\n  The woman was tall.  \n")
    assert [r.text for r in read_sentences(f)] == ["The man was tall.", "The woman was tall."]


def test_jsonl_passes_extra_fields_through(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"id": "a", "text": "One."}\n{"text": "Two.", "group": "x"}\n')
    records = read_sentences(f)
    assert [(r.text, r.extra) for r in records] == [("One.", {"id": "a"}),
                                                    ("Two.", {"group": "x"})]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": "ok", \n', r"s\.jsonl:2: invalid JSON"),
        ('{"text": "ok"}\n["a"]\n', r"s\.jsonl:2: expected a JSON object, got list"),
        ('{"text": "ok"}\n\n{"txt": "a"}\n', r"s\.jsonl:3: field 'text' is missing"),
        ('{"text": 3}\n', r"s\.jsonl:1: field 'text' is an int, not a string"),
        ('{"text": "  "}\n', r"s\.jsonl:1: field 'text' is empty"),
        ("", r"s\.jsonl: no sentences"),
        ("\n  \n", r"s\.jsonl: no sentences"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "s.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        read_sentences(f)


def test_bad_utf8_and_missing_file(tmp_path):
    f = tmp_path / "s.txt"
    f.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"s\.txt:2: not valid UTF-8"):
        read_sentences(f)
    with pytest.raises(DataError, match="no such file"):
        read_sentences(tmp_path / "absent.txt")
    with pytest.raises(DataError, match="is a folder"):
        read_sentences(tmp_path)


def test_iter_jsonl_reports_lines_and_empty_files(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert [(n, o["a"]) for _, n, o in iter_jsonl(f)] == [(1, 1), (3, 2)]
    f.write_text("")
    with pytest.raises(DataError, match="no records"):
        list(iter_jsonl(f))
    f.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        list(iter_jsonl(f))
