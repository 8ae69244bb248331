"""Small helpers shared across q4asr: logging, environment info, atomic file writes."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


def setup_logging(level: int = logging.INFO, rank: int = 0) -> None:
    """One log format for every q4asr CLI: time, level, rank when distributed."""
    prefix = f"[rank {rank}] " if rank else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def git_sha(path: str | Path | None = None) -> str:
    """The git commit of the q4asr checkout (with ``-dirty`` when modified), or ''."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def get_env_info() -> dict[str, Any]:
    """Versions and machine facts recorded into every checkpoint and result file."""
    import torch

    info: dict[str, Any] = {
        "q4asr_git_sha": git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "hostname": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "num_cpus": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "argv": " ".join(sys.argv),
    }
    for name in ("lhotse", "sentencepiece", "jiwer", "safetensors"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # a missing optional package is recorded, not fatal
            info[name] = None
    from q4asr.model.rnnt_backend import BACKEND

    info["rnnt_backend"] = BACKEND
    return info


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; keep the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def update_marked(path: str | Path, text: str, mark: tuple[str, str]) -> Path:
    """Replace the section of ``path`` from ``mark[0]`` to ``mark[1]`` (and the line
    end after it) by ``text``, which carries the marks itself; append it after a
    blank line when the file has no such section (the file is made when missing).
    The rest of the file is kept. Written atomically."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if mark[0] in old and mark[1] in old:
        a, b = old.index(mark[0]), old.index(mark[1]) + len(mark[1]) + 1
        new = old[:a] + text + old[b:]
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + text
    return atomic_write(path, lambda tmp: Path(tmp).write_text(new))
