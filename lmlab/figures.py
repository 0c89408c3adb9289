"""Pictures: matplotlib without a display, and PNG files written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.io import atomic_path, write_error


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only; works on machines without a screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` through a temporary file and a rename (never a half-written PNG), then close it."""
    plt = pyplot()
    path = Path(path)
    try:
        if path.is_dir():
            raise LmlabError(f"{path} is a directory; give a file name for the figure, e.g. {path / 'figure.png'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(path.parent, e) from None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path
