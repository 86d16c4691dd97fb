"""Readers: the released layout, custom JSON Lines, and clear errors for bad input."""

import json

import pytest

from sbs_jax.data import readers
from sbs_jax.errors import DataError
from tests.helpers.data import ANLI_ROWS, make_anli, write_jsonl


def test_real_benchmarks_load_with_aligned_completions(data_dir):
  cqa = readers.load_benchmark("cqa", "test", data_dir)
  assert len(cqa.examples) == len(cqa.completions) == 1221
  ex = cqa.examples[0]
  assert ex.input.splitlines()[1:3] == ["Answer Choices:", "(a) british columbia"]
  assert ex.label in ex.choices
  esnli = readers.load_benchmark("esnli", "validation", data_dir)  # file split "valid"
  assert esnli.split == "valid" and len(esnli.examples) == 9842
  assert {e.label for e in esnli.examples} == set(readers.NLI_LABELS)
  svamp = readers.load_benchmark("svamp", "train", data_dir)
  assert len(svamp.examples) == 800 and svamp.examples[0].id == "train-0"


def test_anli1_layout(tmp_path):
  make_anli(tmp_path, ["a", "b", "c"])
  data = readers.load_benchmark("anli1", "test", tmp_path)
  assert [e.id for e in data.examples] == ["a1", "a2", "a3"]
  assert [e.label for e in data.examples] == ["entailment", "neutral", "contradiction"]
  assert data.completions == ["a", "b", "c"]
  assert data.examples[0].input == ("Premise: The bridge opened in 1932.\n"
                                    "Hypothesis: It opened before 1940.")


def test_completion_count_mismatch_names_both_files(tmp_path):
  make_anli(tmp_path, ["a", "b"])
  with pytest.raises(DataError, match=r"test_CoT_\*\.json.*2 completions for 3 rows.*"
                     r"anli1_test\.json"):
    readers.load_benchmark("anli1", "test", tmp_path)


def test_completion_file_gap_is_an_error(tmp_path):
  make_anli(tmp_path, ["a", "b", "c"])
  (tmp_path / "anli1" / "llm" / "test_CoT_1.json").rename(
      tmp_path / "anli1" / "llm" / "test_CoT_2.json")
  with pytest.raises(DataError, match="test_CoT_1.json is missing"):
    readers.load_benchmark("anli1", "test", tmp_path)


def test_non_string_completion_is_named(tmp_path):
  make_anli(tmp_path, ["a", "b", None])
  with pytest.raises(DataError, match=r"test_CoT_1\.json: item 0: expected a completion"):
    readers.load_benchmark("anli1", "test", tmp_path)


@pytest.mark.parametrize("content,where,field,problem", [
    (b'{"input": "a", "label": "1"}\n{"input": "b", "label": \n', "line 2", "",
     "invalid JSON"),
    (b'{"input": "a", "label": "1"}\n{"text": "b"}\n', "line 2", "input", "missing field"),
    (b'{"input": "a"}\n{"input": "   ", "label": "x"}\n', "line 2", "input", "empty text"),
    (b'{"input": "a"}\n{"input": "caf\xe9"}\n', "line 2", "", "invalid UTF-8"),
    (b'{"input": "a"}\n[1, 2]\n', "line 2", "", "expected a JSON object"),
    (b'{"input": 7}\n', "line 1", "input", "expected a string"),
    (b'{"input": "a", "label": ["x"]}\n', "line 1", "label", "expected a string or number"),
])
def test_bad_custom_rows_name_file_line_and_field(tmp_path, content, where, field, problem):
  path = tmp_path / "mine.jsonl"
  path.write_bytes(content)
  with pytest.raises(DataError) as err:
    readers.load_jsonl(path)
  e = err.value
  assert (e.path, e.where, e.field) == (str(path), where, field)
  assert problem in e.problem
  assert str(path) in str(e) and where in str(e)


def test_bad_benchmark_row_is_named(tmp_path):
  rows = [dict(ANLI_ROWS[0]), dict(ANLI_ROWS[1], label=5)]
  write_jsonl(tmp_path / "anli1" / "anli1_test.json", rows)
  with pytest.raises(DataError, match=r"anli1_test\.json: line 2: field 'label': expected 0, "
                     r"1 or 2"):
    readers.load_benchmark("anli1", "test", tmp_path, with_completions=False)


def test_custom_jsonl_unlabeled_rows_ids_and_completions(tmp_path):
  path = write_jsonl(tmp_path / "faq.jsonl", [
      {"q": "2+2?", "gold": 4, "k": "x1", "out": "So the answer is 4."},
      {"q": "Sky colour?", "k": "x2", "out": "So the answer is blue."}])
  data = readers.load_jsonl(path, split="train", input_key="q", label_key="gold",
                            id_key="k", completion_key="out")
  assert data.dataset == "faq"
  assert [(e.id, e.input, e.label) for e in data.examples] == [("x1", "2+2?", "4"),
                                                             ("x2", "Sky colour?", None)]
  assert data.completions == ["So the answer is 4.", "So the answer is blue."]


def test_custom_json_array(tmp_path):
  path = tmp_path / "arr.json"
  path.write_text(json.dumps([{"input": "a", "label": "b"}, {"input": "c"}]))
  data = readers.load_jsonl(path)
  assert [e.label for e in data.examples] == ["b", None]
  path.write_text(json.dumps([{"input": "a"}, "oops"]))
  with pytest.raises(DataError, match="item 1: expected a JSON object"):
    readers.load_jsonl(path)


def test_duplicate_ids_and_missing_completion_field(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", [{"input": "a", "id": "1"},
                                           {"input": "b", "id": "1"}])
  with pytest.raises(DataError, match="line 2: field 'id': duplicate id '1'"):
    readers.load_jsonl(path, id_key="id")
  with pytest.raises(DataError, match="line 1: field 'out': missing completion"):
    readers.load_jsonl(path, completion_key="out")


def test_unknown_benchmark_and_split(tmp_path):
  with pytest.raises(DataError, match="unknown benchmark"):
    readers.load_benchmark("mnli", "test", tmp_path)
  with pytest.raises(DataError, match="no split 'dev2'"):
    readers.load_benchmark("cqa", "dev2", tmp_path)


def test_data_dir_resolution(tmp_path, monkeypatch):
  monkeypatch.setenv(readers.DATA_DIR_ENV, str(tmp_path / "env"))
  assert readers.resolve_data_dir(str(tmp_path / "flag")) == tmp_path / "flag"
  assert readers.resolve_data_dir() == tmp_path / "env"
