"""Writing folders so that a failure never leaves a half-written one."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """A temporary folder beside `target`, moved into its place when the block ends without error (an existing
    `target` is replaced then, not before); on an error it is deleted and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    partial.chmod(0o755)  # mkdtemp makes it private
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
