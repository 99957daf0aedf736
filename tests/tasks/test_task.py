"""Task construction and prompt files: the errors of the API's ``Task(...)`` and ``Task.from_file``."""

from __future__ import annotations

import pytest

from mechdiff import Task
from mechdiff.errors import MetricError, PromptError


def test_empty_prompt_list():
    with pytest.raises(PromptError, match="empty"):
        Task([])
    with pytest.raises(PromptError, match="prompt 1 is empty"):
        Task(["t1", []])


def test_prompt_file_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptError, match="empty"):
        Task.from_file(tmp_path / "empty.txt")
    with pytest.raises(PromptError, match="does not exist"):
        Task.from_file(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "t1"\n')
    with pytest.raises(PromptError, match="cannot read"):
        Task.from_file(tmp_path / "bad.jsonl")


def test_answers_must_match_prompts():
    with pytest.raises(PromptError, match="answers has 1 entries but there are 2 prompts"):
        Task(["t1", "t2"], answers=["t1"])
    with pytest.raises(MetricError, match="needs answers and wrong_answers"):
        Task(["t1"], answers=["t1"], metric="logit_diff")


