"""Where a command may write: the one rule for every output.

A command changes only what the user named, only after validating its inputs, and only
atomically. Folders transferkit writes carry a marker file (``MARKER``); ``--overwrite``
replaces only a folder that holds one (or an older transferkit folder, recognised by its
own files), and never a folder that holds one of the same command's inputs. A file output
needs ``--overwrite`` to replace an existing file and is never one of the command's inputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._io import make_temp_dir, write_json
from .errors import ArtifactError

MARKER = ".transferkit"  # JSON: {"kind": "run" | "study" | "backbone" | "export", ...}
# Files that only transferkit writes: folders made before the marker existed still count.
_LEGACY_SIGNS = ("study_identity.json", "pretrain.json", "export.json")

log = logging.getLogger("transferkit")

PathLike = str | os.PathLike[str]


def written_by_transferkit(folder: Path) -> bool:
    if (folder / MARKER).is_file():
        return True
    if any((folder / name).is_file() for name in _LEGACY_SIGNS):
        return True
    try:  # a run folder saved before the marker: its config.json names transferkit
        config = json.loads((folder / "config.json").read_text(encoding="utf-8")[:1_000_000])
        return isinstance(config, dict) and "transferkit_version" in config
    except (OSError, ValueError, RecursionError):
        return False


def _resolved(path: PathLike) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _input_paths(inputs: Iterable[Any]) -> list[Path]:
    """The command's inputs that are files or folders here (not ``hf:NAME``, an alias, or a
    path that does not exist: nothing of the user's can be lost there)."""
    return [_resolved(item) for item in inputs if item is not None and Path(item).exists()]


def check_out_folder(target: PathLike, overwrite: bool, inputs: Iterable[Any] = (),
                     option: str = "--out") -> Path:
    """Validate a folder output before any work starts; returns it as a Path.

    Refused: the current folder or one above it, a symbolic link, an existing file, a
    non-empty folder without ``--overwrite``, with it a folder transferkit did not write,
    and any folder that holds one of the command's ``inputs``."""
    target = Path(target)
    where = _resolved(target)
    if target.is_symlink():
        raise ArtifactError(f"{option} {target} is a symbolic link; give the real folder "
                            f"({os.path.realpath(target)}) or a new name.")
    if _inside(Path.cwd().resolve(), where):
        raise ArtifactError(f"{option} {target} is the current folder or holds it; name a new "
                            f"sub-folder instead, e.g. {option} runs/my-run.")
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{option} {target} is a file, not a folder; choose another "
                            f"{option}.")
    for path in _input_paths(inputs):
        if _inside(path, where):
            raise ArtifactError(f"{option} {target} holds {path}, an input of this command; "
                                "writing there could destroy it. Choose another "
                                f"{option}.")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ArtifactError(
                f"Output folder {target} already exists. Choose another {option}, or pass "
                "--overwrite to replace it once the new run has finished.")
        if not written_by_transferkit(target):
            raise ArtifactError(
                f"{target} was not written by transferkit (it has no {MARKER} marker), so "
                "--overwrite will not replace it. Delete it yourself if you no longer need "
                f"it, or choose another {option}.")
    return target


def check_output_file(output: PathLike, overwrite: bool, inputs: Iterable[Any] = (),
                      option: str = "--output") -> Path:
    """Validate a file output before any work starts; returns it as a Path."""
    output = Path(output)
    where = _resolved(output)
    if output.is_symlink():
        raise ArtifactError(f"{option} {output} is a symbolic link; give the real file "
                            f"({os.path.realpath(output)}) or a new name.")
    if output.is_dir():
        raise ArtifactError(f"{option} {output} is a folder; give a file name, e.g. "
                            f"{option} {output / 'predictions.csv'}.")
    for path in _input_paths(inputs):
        if _inside(where, path):
            raise ArtifactError(f"{option} {output} is (or lies inside) {path}, an input of "
                                f"this command; choose another {option}.")
    if output.exists() and not overwrite:
        raise ArtifactError(f"{output} already exists. Choose another {option} or pass "
                            "--overwrite to replace it.")
    return output


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_partials(target: Path) -> list[Path]:
    """Delete the leftovers of killed runs into ``target``: ``.NAME.partial-PID-*`` and
    ``.NAME.old-PID`` folders whose process is gone (a live one may be a run in progress)."""
    removed = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    for kind in ("partial", "old"):
        for leftover in parent.glob(f".{target.name}.{kind}-*"):
            pid_text = leftover.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() \
                else leftover.unlink(missing_ok=True)
            removed.append(leftover)
    for leftover in removed:
        log.warning("removed %s, left behind by an interrupted run", leftover)
    return removed


class staged_output:  # noqa: N801  (used as a context manager, reads like one)
    """Build a folder under a temporary name; move it into place only when it is whole.

    The target is validated up front (:func:`check_out_folder`); with ``overwrite`` the old
    folder is replaced only after the new one is complete, so a failed run loses nothing.
    The new folder carries the marker that lets a later ``--overwrite`` replace it."""

    def __init__(self, target: PathLike, overwrite: bool, main_process: bool = True, *,
                 kind: str = "run", inputs: Iterable[Any] = (), option: str = "--out",
                 checked: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.main_process = main_process
        self.kind = kind
        self.inputs = list(inputs)
        self.option = option
        self.checked = checked  # the caller validated the target itself

    def __enter__(self) -> Path:
        t = self.target
        if not self.main_process:  # other DDP ranks train too, but write into a scratch folder
            self.stage = Path(tempfile.mkdtemp(prefix="transferkit-rank-"))
            return self.stage
        if not self.checked:
            check_out_folder(t, self.overwrite, self.inputs, self.option)
        t.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(t)
        self.stage = make_temp_dir(f".{t.name}.partial-{os.getpid()}-", t.parent)
        return self.stage

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or not self.main_process:
            shutil.rmtree(self.stage, ignore_errors=True)
            return
        write_json(self.stage / MARKER, {"kind": self.kind, "written": time.time()})
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            self.target.rename(old)
            self.stage.rename(self.target)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            self.stage.rename(self.target)


def mark_folder(folder: Path, kind: str) -> None:
    """Mark a folder transferkit fills in place (a study, whose cells are kept as they
    finish) as its own."""
    write_json(folder / MARKER, {"kind": kind, "written": time.time()})


def checkpoint_dir_for(out: Path) -> Path:
    """Checkpoints live beside the run folder (which only appears once the run is whole), so a
    killed run can be resumed with ``--resume``; they are deleted when training finishes."""
    return out.with_name(f"{out.name}.checkpoints")


def fresh_run_dir(train: str, strategy: str, root: PathLike = "runs") -> Path:
    """A new run folder for a run given no --out: runs/<data>-<strategy>-<time>[-N], so a
    second run never collides with the first."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(train)).stem).strip("-.") or "run"
    base = Path(root) / f"{stem}-{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
