"""Hash list files: CSV and TSV, headers or none, comments, per-row kinds, errors naming the line, round trips."""

from __future__ import annotations

import pytest

from banks.formats import export_hash_list, parse_hash_list
from banks.store import Entry, NewEntry
from classifiers.errors import ModerationError

P1, P2, P3 = "a" * 64, "0123456789abcdef" * 4, "f" * 64
S1 = "5" * 64


def test_positional_csv_with_comments_and_blank_lines():
    text = f"# exported 2024-05-01\n\n{P1.upper()}\n{P2},case-7\n  # indented comment\n{P3},case-8,seen twice\n"
    assert parse_hash_list(text) == [NewEntry("pdq", P1), NewEntry("pdq", P2, "case-7"),
                                     NewEntry("pdq", P3, "case-8", "seen twice")]


def test_positional_extra_fields_join_the_note_and_default_kind_applies():
    assert parse_hash_list(f"{S1},x,a note, with a comma\n", default_kind="sha256") == [
        NewEntry("sha256", S1, "x", "a note, with a comma")]


def test_tsv_is_sniffed_from_the_first_data_line():
    text = f"# comment, with a comma\n{P1}\tid-1\tnote, with comma\n{P2}\t\t\n"
    assert parse_hash_list(text) == [NewEntry("pdq", P1, "id-1", "note, with comma"), NewEntry("pdq", P2)]


def test_header_in_any_order_with_ignored_columns_and_per_row_kind():
    text = ("Quality,Signal_Value,Content_ID,Signal_Type,Tags\n"
            f"100,{P1},c1,PDQ,porn\n"
            f"90,{S1},c2,sha-256,\n"
            f"80,{P2},c3,,\n")
    assert parse_hash_list(text, default_kind="pdq") == [
        NewEntry("pdq", P1, "c1"), NewEntry("sha256", S1, "c2"), NewEntry("pdq", P2, "c3")]


def test_a_header_hash_column_named_for_a_kind_sets_that_kind():
    assert parse_hash_list(f"sha256\tnotes\n{S1}\tfrom a partner\n") == [
        NewEntry("sha256", S1, None, "from a partner")]
    # ...and a kind on the row still wins
    assert parse_hash_list(f"sha256,type\n{P1},pdq\n") == [NewEntry("pdq", P1)]


def test_quoted_fields():
    text = f'hash,id,note\n{P1},"id,1","she said ""no"""\n'
    assert parse_hash_list(text) == [NewEntry("pdq", P1, "id,1", 'she said "no"')]


def test_empty_and_header_only_lists():
    assert parse_hash_list("") == []
    assert parse_hash_list("# nothing\n\nkind\thash\tid\tnote\n") == []


@pytest.mark.parametrize("text, line, words", [
    (f"{P1}\nnot-a-hash\n", 2, "invalid pdq hash"),
    (f"# c\n\n{P1}\n{P1[:-1]}\n", 4, "invalid pdq hash"),
    (f"hash,kind\n{P1},pdq\n{P2},md5\n", 3, "unknown hash kind 'md5'"),
    (f"hash,id\n{P1},x\n,y\n", 3, "no hash"),
    ("id,note\nx,y\n", 1, "no hash column"),
    (f'{P1},"unterminated\n', 1, "line 1"),
    (f"{P1}\n{P2}g\n", 2, "invalid pdq hash"),
])
def test_errors_name_the_first_bad_line(text, line, words):
    with pytest.raises(ModerationError) as caught:
        parse_hash_list(text)
    assert caught.value.code == "invalid_request"
    assert caught.value.message.startswith(f"line {line}: ") and words in caught.value.message


def test_unknown_default_kind_and_too_many_entries():
    with pytest.raises(ModerationError, match="unknown hash kind"):
        parse_hash_list(P1, default_kind="md5")
    assert len(parse_hash_list(f"{P1}\n{P2}\n", max_entries=2)) == 2
    with pytest.raises(ModerationError) as caught:
        parse_hash_list(f"{P1}\n{P2}\n{P3}\n", max_entries=2)
    assert caught.value.code == "invalid_request" and "line 3: more than 2 entries" in caught.value.message


def _entries() -> list[Entry]:
    made = "2024-05-01T00:00:00.000Z"
    return [Entry(1, "b", "pdq", P1, None, None, made),
            Entry(2, "b", "sha256", S1, "id\t2", 'a "quoted", tabbed\tnote', made),
            Entry(3, "b", "pdq", P2, "#3", "two\nlines", made)]


@pytest.mark.parametrize("delimiter", ["\t", ","])
def test_export_then_parse_round_trips(delimiter):
    lines = list(export_hash_list(_entries(), delimiter=delimiter))
    assert lines[0] == delimiter.join(("kind", "hash", "entry_id", "note")) + "\n"
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    back = parse_hash_list("".join(lines), default_kind="sha256")
    assert back == [NewEntry("pdq", P1), NewEntry("sha256", S1, "id\t2", 'a "quoted", tabbed\tnote'),
                    NewEntry("pdq", P2, "#3", "two lines")]


def test_export_header_is_tab_separated_by_default_and_other_delimiters_are_refused():
    assert next(export_hash_list([])) == "kind\thash\tentry_id\tnote\n"
    with pytest.raises(ValueError):
        list(export_hash_list([], delimiter=";"))
