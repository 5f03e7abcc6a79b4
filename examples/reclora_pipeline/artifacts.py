"""The run folder and its one reuse mechanism: every stage's output is stored under the key of what it was built from.

A stage is a :class:`StageNode`: its name, a label for people, the slice of the config it reads (``inputs``, the
stage's :class:`StageInputs` dataclass), the nodes whose artifacts it reads (``upstream``) and its schema version. Its
key is the sha256 of all of that (the upstream nodes by their keys, the inputs by their dict form), so a changed
setting changes the key of the stages that read it and of everything downstream, and nothing else. :func:`cached`
returns the artifact of a key, building it first when the folder has none:

    OUT/stages/<stage>/<label>-<key[:16]>/            a finished artifact: its files and stage.json (the manifest)
    OUT/stages/<stage>/.building-<label>-<key[:16]>/  an artifact being built (or left by a killed run)

A build writes into the ``.building-`` folder, writes the manifest last and renames the folder: a run killed at any
moment leaves either a finished artifact or a ``.building-`` folder, which is never read as finished (the tune stage
resumes its checkpoints from it, since they belong to the same key). The manifest records the size and sha256 of
every file; a finished artifact is reused only when every file still has them (and loads), otherwise it is reported
with its path and rebuilt.

The folder has one writer at a time (:meth:`RunFolder.writing`): a run holds an exclusive lock on
``OUT/.reclora-run.lock`` from before its first write to its end (the kernel releases it when the process dies), and a
second run on the folder is refused. ``OUT/.reclora-run`` marks a folder this tool created; a folder that is neither
absent, empty nor marked is refused before anything is written, so the pipeline never writes (or deletes) among files
it did not make.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar, Union

from .config_tree import canonical
from .distributed import Processes


STAGES_DIR = "stages"
MANIFEST_NAME = "stage.json"
BUILDING_PREFIX = ".building-"
KEY_CHARS = 16
RUN_MARKER = ".reclora-run"  # written when the tool creates a run folder: the folder is the tool's to write
LOCK_NAME = ".reclora-run.lock"  # held (flock) by the one run writing the folder


class RunFolderError(ValueError):
    """``--out`` cannot be written by this run: it is another kind of folder, or another run is writing it."""


def sha256_of_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(value), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def omitted_when_none(**metadata):
    """A :class:`StageInputs` field left out of the inputs' dict while it is None (a setting only some nodes of a
    stage read: their keys stay those of the nodes that never had it)."""
    return field(default=None, metadata={**metadata, "omit_none": True})


Inputs = TypeVar("Inputs", bound="StageInputs")


@dataclass(frozen=True)
class StageInputs:
    """Base of the dataclass each stage declares of what it reads. Its dict form (:meth:`to_dict`) is what the key
    hashes and the manifest records: one entry per field, by the field's name, config sections as their dicts,
    nested inputs as theirs, a field made with :func:`omitted_when_none` left out while None, and a field with a
    ``to_dict`` function in its metadata as that function writes it (a retrieval's settings: those its mode reads).
    :meth:`from_dict` reads the dict back typed."""

    def to_dict(self) -> dict:
        data = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.metadata.get("omit_none"):
                continue
            if value is not None and "to_dict" in item.metadata:
                value = item.metadata["to_dict"](value)
            data[item.name] = value.to_dict() if isinstance(value, StageInputs) else canonical(value)
        return data

    @classmethod
    def from_dict(cls: type[Inputs], data: dict) -> Inputs:
        """The inputs a manifest recorded: dataclass fields (config sections, nested inputs) rebuilt from their
        dicts, lists as tuples where the field is a tuple."""
        hints = typing.get_type_hints(cls)
        values = {}
        for item in fields(cls):
            if not item.init or item.name not in data:
                continue
            values[item.name] = _typed(data[item.name], hints[item.name])
        return cls(**values)


def _typed(value, hint):
    if value is None:
        return None
    options = [option for option in typing.get_args(hint) if option is not type(None)]
    if typing.get_origin(hint) is Union and len(options) == 1:
        hint = options[0]
    if isinstance(hint, type) and is_dataclass(hint):
        return hint.from_dict(value) if issubclass(hint, StageInputs) else hint(**value)
    if (hint is tuple or typing.get_origin(hint) is tuple) and isinstance(value, list):
        return tuple(tuple(item) if isinstance(item, list) else item for item in value)
    return value


@dataclass(frozen=True)
class StageNode:
    """One stage of a run before it runs: what it reads, and therefore its key."""

    stage: str
    label: str
    inputs: StageInputs
    upstream: tuple = ()
    version: int = 1

    @cached_property
    def key(self) -> str:
        return digest({"stage": self.stage, "version": self.version, "inputs": self.inputs.to_dict(),
                       "upstream": sorted([node.stage, node.key] for node in self.upstream)})

    def __repr__(self) -> str:
        return f"StageNode({self.stage}/{self.label} {self.key[:12]})"


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: its folder and its manifest (key, inputs, upstream keys, files, summary)."""

    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def summary(self) -> dict:
        return self.manifest.get("summary", {})

    def inputs_as(self, inputs_class: type[Inputs]) -> Inputs:
        """The inputs the artifact was built from, typed: ``tune.inputs_as(TuneInputs).llm.dtype``."""
        return inputs_class.from_dict(self.manifest["inputs"])

    @property
    def upstream(self) -> dict:
        """``{stage: [keys]}`` of the artifacts this one was built from."""
        found: dict = {}
        for stage, key in self.manifest.get("upstream", []):
            found.setdefault(stage, []).append(key)
        return found


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_") or "x"


# -- atomic files -----------------------------------------------------------------------------------------------------
# mkstemp creates its file readable by its owner only; a finished file gets the mode an ordinary open() would give it.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename, on failure it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(staging, FILE_MODE)
    try:
        yield Path(staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def write_text_atomically(path: Union[str, Path], text: str) -> Path:
    with atomic_path(path) as staging:
        staging.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomically(path: Union[str, Path], data: Any) -> Path:
    return write_text_atomically(path, json.dumps(canonical(data), indent=2, default=str) + "\n")


def read_json(path: Union[str, Path], what: str) -> Any:
    """JSON from a file; a missing or unreadable file raises an error naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what}: {path} is not valid JSON ({error})") from None


# -- the folder -------------------------------------------------------------------------------------------------------
@dataclass
class StageEvent:
    stage: str
    label: str
    key: str
    action: str  # "built", "reused" or "rebuilt" (a damaged artifact)
    seconds: float
    path: str


@dataclass
class RunFolder:
    """A run folder: the artifacts of every stage ever run in it, and the latest run's config and report.

    ``processes``: the processes of a run launched on several (``distributed.Processes``); the main one decides what
    is reused, writes every artifact and logs, the others wait for it (see :func:`cached`)."""

    root: Path
    log: Callable[[str], None] = print
    events: list = field(default_factory=list)
    processes: Any = None

    def __post_init__(self):
        self.root = Path(self.root)
        self.processes = self.processes or Processes()
        if not self.processes.main:
            self.log = _silent

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def results_path(self) -> Path:
        return self.root / "results.json"

    def stage_root(self, stage: str) -> Path:
        return self.root / STAGES_DIR / stage

    def artifact_dir(self, node: StageNode) -> Path:
        return self.stage_root(node.stage) / f"{safe_name(node.label)}-{node.key[:KEY_CHARS]}"

    def building_dir(self, node: StageNode) -> Path:
        return self.stage_root(node.stage) / f"{BUILDING_PREFIX}{safe_name(node.label)}-{node.key[:KEY_CHARS]}"

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the folder as its one writer for the ``with`` block: the folder must be absent, empty or a run folder
        of this tool, and no other run may be writing it; either problem raises :class:`RunFolderError` on every
        process before anything is written. The lock goes with the process (exit, exception or kill)."""
        problem, handle = None, None
        if self.processes.main:
            try:
                handle = self._take()
            except (RunFolderError, OSError) as error:
                problem = error
        refused = self.processes.broadcast(None if problem is None else str(problem))
        if problem is not None:
            raise problem
        if refused is not None:
            raise RunFolderError(refused)
        try:
            yield
        finally:
            if handle is not None:
                handle.close()  # closing the descriptor releases the lock

    def _take(self):
        """The locked handle of ``LOCK_NAME``, after checking what the folder is; writes the marker."""
        check_run_folder(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / LOCK_NAME
        handle = open(lock, "a+", encoding="utf-8")
        if not _try_lock(handle, exclusive=True):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderError(f"out: {self.root} is being written by another run, or read by one "
                                 f"(its {LOCK_NAME} is held; last writer: {holder}); wait for it to finish or give "
                                 "another folder")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        handle.flush()
        if not (self.root / RUN_MARKER).is_file():
            write_json_atomically(self.root / RUN_MARKER, {"format": "reclora-pipeline run folder",
                                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return handle

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A shared hold for readers of a finished run (``RecLoraRecommender.from_run``): refused while a run is
        writing the folder, whose files may then describe two runs."""
        lock = self.root / LOCK_NAME
        if not lock.is_file():
            yield
            return
        with open(lock, "r", encoding="utf-8") as handle:
            if not _try_lock(handle, exclusive=False):
                holder = handle.read().strip() or "another process"
                raise RunFolderError(f"{self.root} is being written by a run ({holder}); read it once that run has "
                                     "finished")
            yield

    def artifact(self, stage: str, key: str) -> Artifact:
        """The finished artifact of ``stage`` with ``key`` (a full key); errors name what is missing or broken."""
        matches = [path for path in self.stage_root(stage).glob(f"*-{key[:KEY_CHARS]}") if path.is_dir()
                   and not path.name.startswith(BUILDING_PREFIX)]
        if not matches:
            raise FileNotFoundError(f"{self.stage_root(stage)} holds no finished {stage} artifact with key "
                                    f"{key[:KEY_CHARS]} (was the run that made it interrupted, or the folder pruned?)")
        path = matches[0]
        manifest = read_json(path / MANIFEST_NAME, f"{stage} artifact")
        problem = manifest_problem(path, manifest, key)
        if problem:
            raise ValueError(f"{stage} artifact {path} is damaged: {problem}")
        return Artifact(path, manifest)


def check_run_folder(root: Path) -> None:
    """Raise :class:`RunFolderError` unless ``root`` is absent, empty, or a run folder of this tool (its marker, or
    the ``stages/`` and ``config.json`` of a folder written before markers existed)."""
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"out: {root} is a file, not a folder")
    if not root.is_dir() or (root / RUN_MARKER).is_file():
        return
    if (root / STAGES_DIR).is_dir() and (root / "config.json").is_file():
        return
    entries = sorted(entry.name for entry in root.iterdir() if entry.name != LOCK_NAME)
    if entries:
        raise RunFolderError(f"out: {root} is neither empty nor a run folder of this tool (it has no {RUN_MARKER}; "
                             f"it holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}); give an empty "
                             "or new folder, so that no file of yours is overwritten or removed")


def _try_lock(handle, exclusive: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return True
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def manifest_problem(path: Path, manifest: Any, key: str) -> Optional[str]:
    """Why a finished artifact cannot be trusted, or None: every file the manifest lists must have the size and the
    sha256 it had when it was written."""
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return f"its {MANIFEST_NAME} is not the manifest of key {key[:KEY_CHARS]}"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return f"its {MANIFEST_NAME} lists no files"
    for name, recorded in files.items():
        if not isinstance(recorded, dict) or not {"size", "sha256"} <= set(recorded):
            return f"its {MANIFEST_NAME} records no sha256 of {name} (written by an earlier version)"
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != recorded["size"]:
            return f"{name} has {file.stat().st_size} bytes, {recorded['size']} were written"
        if sha256_of_file(file) != recorded["sha256"]:
            return f"{name} is not the file that was written (its sha256 differs)"
    return None


def _read_manifest(path: Path) -> Any:
    try:
        return json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX), so two runs on one folder never build the same artifact at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _files(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of_file(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST_NAME}


def _silent(message: str) -> None:
    """The log of a process other than the main one: the main process speaks for the run."""


def cached(folder: RunFolder, node: StageNode, build: Callable[[Path], Optional[dict]],
           load: Callable[[Artifact], Any], *, keep: Sequence[str] = (), collective: bool = False
           ) -> tuple[Any, Artifact]:
    """The artifact of ``node`` loaded with ``load``: reused when the folder has it finished and readable, else built.

    ``build(staging)`` writes the artifact's files into ``staging`` and returns a JSON summary for the manifest;
    ``keep`` names entries of an interrupted build of the same key that a new build may resume from.

    On several processes the main one decides whether to reuse or build and tells the others. A plain build runs on
    the main process while the others wait; a ``collective`` build (tuning with DDP, sharded scoring) runs on every
    process, which must leave the writing of files to the main one, and the main process finishes the artifact. Every
    process then loads the finished artifact.
    """
    processes = folder.processes
    if not processes.several:
        return _cached(folder, node, build, load, keep)
    if not collective:
        if processes.main:
            result = _cached(folder, node, build, load, keep)
        processes.wait()
        if processes.main:
            return result
        artifact = folder.artifact(node.stage, node.key)
        return load(artifact), artifact
    if processes.main:  # tells the others whether a build runs, once the build folder is ready
        result = _cached(folder, node, build, load, keep, prepared=processes.broadcast)
        processes.wait()
        return result
    if processes.broadcast(None):
        build(folder.building_dir(node))
    processes.wait()  # the main process has finished the artifact
    artifact = folder.artifact(node.stage, node.key)
    return load(artifact), artifact


def _cached(folder: RunFolder, node: StageNode, build, load, keep, prepared: Callable[[bool], Any] = bool):
    """:func:`cached` on the main process. ``prepared(True)`` is called once the build folder is ready, just before
    ``build``; ``prepared(False)`` when nothing is built (a collective build's other processes wait on it)."""
    final = folder.artifact_dir(node)
    damage = manifest = None
    if final.is_dir():
        manifest = _read_manifest(final)
        damage = manifest_problem(final, manifest, node.key)
        if damage is None:
            artifact = Artifact(final, manifest)
            try:
                loaded = load(artifact)
            except Exception as error:  # anything a damaged file can raise: recompute it
                damage = f"it cannot be read ({type(error).__name__}: {error})"
            else:
                prepared(False)
                folder.events.append(StageEvent(node.stage, node.label, node.key, "reused", 0.0, str(final)))
                folder.log(f"{node.stage} {node.label}: reused {final.relative_to(folder.root)}")
                return loaded, artifact
        folder.log(f"{node.stage} {node.label}: {final} is damaged ({damage}); recomputing")
    artifact, seconds = _build(folder, node, build, keep, damaged=manifest if damage else None, prepared=prepared)
    try:
        loaded = load(artifact)
    except Exception as error:
        raise RuntimeError(f"{node.stage} {node.label}: the artifact just built in {artifact.path} cannot be read "
                           f"({type(error).__name__}: {error})") from error
    folder.events.append(StageEvent(node.stage, node.label, node.key, "rebuilt" if damage else "built", seconds,
                                    str(artifact.path)))
    return loaded, artifact


def _build(folder: RunFolder, node: StageNode, build, keep, damaged: Optional[dict] = None,
           prepared: Callable[[bool], Any] = bool) -> tuple[Artifact, float]:
    """``damaged``: the manifest of the finished artifact found damaged, which must be built again even though its
    manifest checks out (its files have the recorded sizes, yet one cannot be read)."""
    final = folder.artifact_dir(node)
    staging = folder.building_dir(node)
    with _locked(staging.with_name(staging.name + ".lock")):
        manifest = _read_manifest(final) if final.is_dir() else None
        if manifest is not None and manifest != damaged and manifest_problem(final, manifest, node.key) is None:
            prepared(False)
            return Artifact(final, manifest), 0.0  # another run finished it while this one waited
        for path in (final, staging):
            if path.is_symlink():
                raise RunFolderError(f"{node.stage} {node.label}: {path} is a symbolic link (to {os.readlink(path)}) "
                                     "and its artifact must be built again; the pipeline does not replace a link it "
                                     "did not make: remove the link (or repair what it points to) and run again")
        if staging.is_dir():
            for entry in staging.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        staging.mkdir(parents=True, exist_ok=True)
        prepared(True)
        started = time.perf_counter()
        summary = build(staging) or {}
        seconds = time.perf_counter() - started
        manifest = {"stage": node.stage, "label": node.label, "key": node.key, "schema_version": node.version,
                    "inputs": node.inputs.to_dict(), "upstream": sorted([n.stage, n.key] for n in node.upstream),
                    "files": _files(staging), "summary": canonical(summary), "seconds": seconds,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomically(staging / MANIFEST_NAME, manifest)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    folder.log(f"{node.stage} {node.label}: built in {seconds:.0f} s ({final.relative_to(folder.root)})")
    return Artifact(final, manifest), seconds
