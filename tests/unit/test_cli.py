"""The CLI and the job entry points, without Spark (errors surface before a session starts)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pld_spark.cli import DISTILL_STAGES, build_parser
from pld_spark.jobs_entry import ENTRY_POINTS, to_cli_argv

REPO = Path(__file__).resolve().parents[2]


def test_misspelt_key_fails_cleanly_naming_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "conf" / "stereoset.yaml").read_text().replace("resolve:\n", "reslove:\n"))
    (tmp_path / "base.yaml").write_text((REPO / "conf" / "base.yaml").read_text())
    p = subprocess.run([sys.executable, "-m", "pld_spark.cli", "ingest", "--config", str(bad)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2
    assert "unknown key 'reslove'" in p.stderr and str(bad) in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_dataset_file_is_named(tmp_path, monkeypatch):
    """A config whose dataset.path does not exist: loading it fails with a DataError that names the
    path (every place looked in) and how to get the data. No Spark: the loader runs first in
    ingest (tests/spark/test_ingest.py checks that `pld ingest` prints it and exits 2)."""
    from pld_spark.config import load_config
    from pld_spark.data.loaders import load_dataset
    from pld_spark.errors import DataError

    missing = tmp_path / "nope" / "stereoset_dev.json"
    cfg = load_config(REPO / "conf" / "stereoset.yaml", [f"dataset.path={missing}"])
    with pytest.raises(DataError) as e:
        load_dataset(cfg.dataset)
    msg = str(e.value)
    assert msg.startswith(f"dataset file not found: {missing} ")
    assert "How to get it:" in msg and "data/stereoset/README.md" in msg
    # a relative path is looked up in the working directory, then in the repository: both are named
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "conf" / "contractnli.yaml", ["dataset.path=data/no_such_dir"])
    with pytest.raises(DataError) as e:
        load_dataset(cfg.dataset)
    msg = str(e.value)
    assert "data/no_such_dir" in msg and str(tmp_path / "data/no_such_dir") in msg
    assert str(REPO / "data/no_such_dir") in msg and "ContractNLI" in msg


def test_job_parameters_translate_to_cli():
    argv = to_cli_argv("extract", ["--config=conf/stereoset.yaml", "--catalog=main", "--schema=pld",
                                   "--teacher_endpoint=https://x/serving-endpoints", "--teacher_model=m",
                                   "--teacher_key_env=TOK", "--set=extract.batch_size=4"])
    assert argv[:3] == ["extract", "--config", "conf/stereoset.yaml"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert {"lakehouse.catalog=main", "lakehouse.schema=pld", "teacher.type=openai",
            "teacher.base_url=https://x/serving-endpoints", "teacher.model=m", "teacher.api_key_env=TOK",
            "extract.batch_size=4"} == set(sets)
    build_parser().parse_args(argv)  # the CLI accepts what the job produces


def test_bundle_tasks_call_existing_entry_points_with_accepted_parameters():
    """Every databricks.yml task names an installed console script that accepts its named parameters."""
    from importlib.metadata import entry_points

    installed = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.value.startswith("pld_spark.")}
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text())
    tasks = [t for job in bundle["resources"]["jobs"].values() for t in job["tasks"]]
    assert {t["task_key"] for t in tasks} == {"ingest", *DISTILL_STAGES, "evaluate", "score"}
    for t in tasks:
        wt = t["python_wheel_task"]
        assert wt["package_name"] == "pld_spark"
        ep = installed.get(wt["entry_point"])
        assert ep is not None, f"task {t['task_key']}: entry point {wt['entry_point']} is not installed"
        fn = ep.load()
        assert callable(fn)
        command = ENTRY_POINTS[wt["entry_point"]]
        named = [f"--{k}={v}" for k, v in wt["named_parameters"].items()]
        argv = to_cli_argv(command, named)
        build_parser().parse_args(argv)


def test_config_show_lists_the_merged_files_in_order(tmp_path, capsys):
    from pld_spark.cli import main
    from pld_spark.config import PACKAGED_CONF_DIR

    task = tmp_path / "mine.yaml"
    task.write_text((REPO / "conf" / "stereoset.yaml").read_text())
    assert main(["config", "show", "--config", str(task), "--set", "student.max_tokens=5"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[:4]
    assert head == ["# merged, in order (later wins):", f"#   1. {PACKAGED_CONF_DIR / 'base.yaml'}", f"#   2. {task}",
                    "#   3. --set student.max_tokens=5"]
    merged = yaml.safe_load(out)
    assert merged["student"]["max_tokens"] == 5 and merged["teacher"]["max_tokens"] == 160  # base.yaml applied
