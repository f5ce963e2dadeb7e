"""The "Your own data" example: the README shows exactly the shipped files, the config loads
over the packaged base, and the generic loader reads every row; dataset.path resolution order."""
import re
from pathlib import Path

import pytest

from pld_spark.config import load_config
from pld_spark.data.loaders import REPO_ROOT, load_dataset, resolve_path
from pld_spark.errors import DataError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "conf" / "examples" / "my_task.yaml"
DATA = REPO / "data" / "examples" / "my_task.csv"


def _readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- marker -->`` in README.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- {re.escape(marker)} -->\n```[a-z]*\n(.*?)```\n", readme, re.S)
    assert m, f"README.md has no code block after <!-- {marker} -->"
    return m.group(1)


def test_readme_shows_exactly_the_example_files():
    assert _readme_block("example-file: conf/examples/my_task.yaml") == EXAMPLE.read_text(encoding="utf-8")
    head = _readme_block("example-head: data/examples/my_task.csv").splitlines()
    assert len(head) >= 3 and head == DATA.read_text(encoding="utf-8").splitlines()[:len(head)]


def test_example_config_loads_over_the_packaged_base_and_its_data_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative dataset.path falls back to the repository root
    cfg = load_config(EXAMPLE)
    assert cfg.dataset.loader == "generic" and cfg.task.label_names == ["billing", "technical", "account"]
    assert cfg.student.max_tokens == 8  # from the packaged base (extends: base)
    loaded = load_dataset(cfg.dataset)
    rows = loaded.rows
    assert len(rows) == 30 and not loaded.fatal
    assert all(r["decode_error"] is None and r["text"] and r["source"] == "my_task.csv" for r in rows)
    assert [r["example_id"] for r in rows[:3]] == ["t01", "t02", "t03"]
    assert len({r["example_id"] for r in rows}) == 30
    per_label = {}
    for r in rows:
        per_label[r["label"]] = per_label.get(r["label"], 0) + 1
    assert per_label == {"billing": 10, "technical": 10, "account": 10}
    assert rows[1]["text"] == "The app crashes as soon as I open the settings page."  # quoted CSV field


def test_relative_dataset_path_looks_in_the_cwd_first_then_the_repo(tmp_path, monkeypatch):
    rel = "data/examples/my_task.csv"
    monkeypatch.chdir(tmp_path)
    assert resolve_path(rel, "generic") == (REPO_ROOT / rel).resolve()  # only in the repository
    mine = tmp_path / rel
    mine.parent.mkdir(parents=True)
    mine.write_text("ticket_id,body,team\nx1,my own ticket,billing\n")
    assert resolve_path(rel, "generic") == mine.resolve()  # the user's copy wins
    with pytest.raises(DataError) as e:
        resolve_path("data/nope.csv", "generic")
    msg = str(e.value)
    assert msg.index(str(tmp_path / "data/nope.csv")) < msg.index(str(REPO_ROOT / "data/nope.csv"))


def test_dataset_path_description_states_the_same_order():
    from pld_spark.config import DatasetConfig

    desc = DatasetConfig.model_fields["path"].description
    assert desc.index("current directory") < desc.index("repository root")
