from pathlib import Path

import pytest

from pld_spark.config import load_config, with_overrides
from pld_spark.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_task_configs_load_and_are_frozen():
    for name in ("stereoset.yaml", "contractnli.yaml"):
        cfg = load_config(CONF / name)
        assert cfg.task.name == name.split(".")[0]
        assert cfg.teacher.type == "llamacpp"
        with pytest.raises(Exception):
            cfg.task.name = "other"  # frozen
    cfg = load_config(CONF / "stereoset.yaml")
    assert cfg.task.label_names == ["gender", "profession", "race", "religion"]
    # base.yaml values arrive under the task file's
    assert cfg.cluster.embedder.type == "tfidf_svd"
    assert cfg.cluster.clusterer.min_samples == 3


def test_misspelt_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONF / "stereoset.yaml").read_text() + "\nextract:\n  bach_size: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad, base=CONF / "base.yaml")
    msg = str(e.value)
    assert "extract.bach_size" in msg and str(bad) in msg


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(CONF / "stereoset.yaml", ["extract.batch_size=many"])
    assert "extract.batch_size" in str(e.value) and "--set" in str(e.value)


def test_unknown_key_in_base_is_attributed_to_base(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text((CONF / "base.yaml").read_text() + "\nstudnet: {type: llamacpp}\n")
    task = tmp_path / "t.yaml"
    task.write_text((CONF / "stereoset.yaml").read_text())
    with pytest.raises(ConfigError) as e:
        load_config(task)
    assert "studnet" in str(e.value) and str(base) in str(e.value)


def test_set_overrides_and_hash_changes():
    a = load_config(CONF / "stereoset.yaml")
    b = load_config(CONF / "stereoset.yaml", ["teacher.max_tokens=99", "dataset.sample.train=5"])
    assert b.teacher.max_tokens == 99 and b.dataset.sample.train == 5
    assert a.hash != b.hash
    assert a.hash == load_config(CONF / "stereoset.yaml").hash
    c = with_overrides(a, {"resolve.max_rounds": 0})
    assert c.resolve.max_rounds == 0


def test_secrets_are_references_not_values():
    cfg = load_config(CONF / "stereoset.yaml", ["teacher.type=openai", "teacher.api_key_env=MY_KEY"])
    assert cfg.teacher.api_key_env == "MY_KEY"
    assert "api_key:" not in cfg.text
    with pytest.raises(ConfigError):
        load_config(CONF / "stereoset.yaml", ["teacher.api_key=sk-123"])


def test_bad_input_template_is_rejected():
    with pytest.raises(ConfigError) as e:
        load_config(CONF / "stereoset.yaml", ["task.input_template={txt}"])
    assert "input_template" in str(e.value)
