from pathlib import Path

import pytest

from pld_spark.config import PACKAGED_CONF_DIR, load_config, with_overrides
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
    assert cfg.cluster.embedder.type == "auto" and cfg.student.calibration == "auto"
    assert cfg.cluster.clusterer.eps is None and cfg.cluster.clusterer.min_samples is None  # the k-distance knee
    assert cfg.extract.batch_size == 8  # the task file's, over base.yaml's 16


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
    task.write_text("extends: base.yaml\n" + (CONF / "stereoset.yaml").read_text())
    with pytest.raises(ConfigError) as e:
        load_config(task)
    assert "studnet" in str(e.value) and str(base) in str(e.value)


def test_task_file_outside_conf_gets_the_packaged_base(tmp_path):
    """No base.yaml beside the file and no extends: the packaged base still applies."""
    task = tmp_path / "elsewhere" / "mine.yaml"
    task.parent.mkdir()
    task.write_text((CONF / "stereoset.yaml").read_text())
    cfg = load_config(task)
    assert cfg.student.max_tokens == 8 and cfg.teacher.max_tokens == 160  # base.yaml, not the model defaults
    assert cfg.score.engine == "ray" and cfg.consolidate.max_members == 12
    assert cfg.merged_from == (str(PACKAGED_CONF_DIR / "base.yaml"), str(task))
    # the repository's conf/base.yaml is the packaged file, not a copy
    assert (CONF / "base.yaml").resolve() == (PACKAGED_CONF_DIR / "base.yaml").resolve()
    assert cfg.hash == load_config(CONF / "stereoset.yaml").hash


def test_extends_a_file_relative_to_the_task_file(tmp_path):
    team = tmp_path / "shared" / "team.yaml"
    team.parent.mkdir()
    team.write_text("student: {max_tokens: 4}\nteacher: {max_tokens: 99}\n")
    task = tmp_path / "tasks" / "mine.yaml"
    task.parent.mkdir()
    task.write_text("extends: ../shared/team.yaml\n" + (CONF / "stereoset.yaml").read_text()
                    + "teacher: {max_tokens: 77}\n")
    cfg = load_config(task, ["extract.batch_size=3"])
    assert cfg.student.max_tokens == 4  # from team.yaml
    assert cfg.teacher.max_tokens == 77  # the task file wins over what it extends
    assert cfg.student.calibration == "auto" and cfg.cluster.embedder.dims == 64  # team.yaml sits on base
    assert cfg.merged_from == (str(PACKAGED_CONF_DIR / "base.yaml"), str(team), str(task), "--set extract.batch_size=3")


def test_extends_a_packaged_name(tmp_path):
    task = tmp_path / "mine.yaml"
    task.write_text("extends: base\n" + (CONF / "stereoset.yaml").read_text())
    cfg = load_config(task)
    assert cfg.student.max_tokens == 8
    assert cfg.merged_from == (str(PACKAGED_CONF_DIR / "base.yaml"), str(task))


def test_bad_extends_is_a_config_error_naming_it(tmp_path):
    task = tmp_path / "mine.yaml"
    body = (CONF / "stereoset.yaml").read_text()
    task.write_text("extends: ../nope/defaults.yaml\n" + body)
    with pytest.raises(ConfigError) as e:
        load_config(task)
    assert str(task) in str(e.value) and "../nope/defaults.yaml" in str(e.value)
    assert str(tmp_path.parent / "nope" / "defaults.yaml") in str(e.value)
    task.write_text("extends: basse\n" + body)
    with pytest.raises(ConfigError, match="no packaged config of that name.*base"):
        load_config(task)
    task.write_text("extends: [base]\n" + body)
    with pytest.raises(ConfigError, match="'extends' must be"):
        load_config(task)
    other = tmp_path / "other.yaml"
    other.write_text("extends: mine.yaml\n")
    task.write_text("extends: other.yaml\n" + body)
    with pytest.raises(ConfigError, match="cycle"):
        load_config(task)


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


def test_yaml_switch_words_reach_string_literal_fields(tmp_path):
    """YAML 1.1 reads `off` as False: `--set select.mode=off` and `mode: off` in a file failed validation."""
    from pld_spark.config import load_config

    assert load_config(CONF / "stereoset.yaml", ["select.mode=off"]).select.mode == "off"
    f = tmp_path / "t.yaml"
    f.write_text(f"extends: {CONF / 'stereoset.yaml'}\nselect:\n  mode: off\n")
    assert load_config(f).select.mode == "off"
    with pytest.raises(ConfigError, match="select.mode"):  # a word the field does not have stays an error
        load_config(CONF / "stereoset.yaml", ["select.mode=yes"])
    with pytest.raises(ConfigError, match="select.coverage"):  # a bool field is untouched
        load_config(CONF / "stereoset.yaml", ["select.coverage=maybe"])
