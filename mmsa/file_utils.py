"""Writing outputs so that a failure never leaves a half-written file or folder, and checking output paths before
any work starts. Every writer of the package goes through `atomic_file`, `atomic_path` or `atomic_folder`."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputPathError(FileExistsError, ValueError):
    """An output path that cannot be written as asked; the message names it and says why."""


def current_umask() -> int:
    """The process's umask, read without changing it where `/proc` tells it (else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, folder: bool = False) -> None:
    """Gives a temporary file (made 0600 by `mkstemp`) or folder (0700) the mode a plain `open` would have."""
    path.chmod((0o777 if folder else 0o666) & ~current_umask())


def check_output_file(path: str | Path, what: str = "--output") -> Path:
    """Refuses, before any work, an output file path that is an existing folder or lies below a file."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is an existing folder: give a file path")
    return check_parents(path, what)


def check_parents(path: Path, what: str) -> Path:
    """Refuses a path whose nearest existing parent is a file."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{what} {path}: {parent} is a file, not a folder")
            break
    return path


def check_output_folder(path: str | Path, overwrite: bool = False, what: str = "--output") -> Path:
    """Refuses, before any work, an output folder path that is an existing file, or a non-empty folder unless
    `overwrite` (then the folder is replaced as a whole once the new one is complete)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is an existing file, not a folder")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise OutputPathError(
            f"{what} {path} is a folder that is not empty: choose a new folder, or pass --overwrite to replace it "
            "as a whole once the new one is complete"
        )
    return check_parents(path, what)


@contextmanager
def atomic_path(path: str | Path, check: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` to write (by any writer that takes a path), renamed onto `path` when the block
    ends without error; on an error, `KeyboardInterrupt` or `SystemExit` (the CLI turns SIGTERM into one) it is
    deleted and `path` is left as it was. The file gets the mode a plain `open` would give it."""
    path = Path(path)
    if check:
        check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    partial = Path(partial)
    try:
        yield partial
        _publish_mode(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", check: bool = True):
    """A file handle (`mode` "w" for UTF-8 text or "wb") for `path`, written to a temporary file beside it and
    renamed into place when the block ends without error: an interrupted run leaves no partial output."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, check=check) as partial:
        with open(partial, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


@contextmanager
def atomic_folder(target: str | Path, overwrite: bool = True, what: str = "--output") -> Iterator[Path]:
    """A temporary folder beside `target`, moved into its place when the block ends without error (an existing
    `target` is replaced then, not before); on an error it is deleted and `target` is left as it was.

    The target is checked before the block runs (`check_output_folder`): a file is refused, and so is a non-empty
    folder unless `overwrite`."""
    target = check_output_folder(target, overwrite=overwrite, what=what)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    _publish_mode(partial, folder=True)
    try:
        yield partial
        if target.exists():
            retired = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(retired)
            partial.rename(target)
            shutil.rmtree(retired)
        else:
            partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies below it (after resolving links)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
