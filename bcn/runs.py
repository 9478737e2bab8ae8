"""What both frameworks' launchers and toy datasets share about folders on disk (not BCN
itself, so not in bcn's namespace)."""
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def refuse_to_overwrite(run_dir: str, setting: str) -> None:
    """Never overwrite a run's checkpoints by accident: both frameworks leave a last_checkpoint
    file in a run's folder. ``setting`` names the option that chose the folder."""
    last = Path(run_dir) / "last_checkpoint"
    if last.exists():
        raise SystemExit(f"{run_dir} already holds a training run (last checkpoint "
                         f"{last.read_text().strip()}): pass --resume to continue it, --overwrite "
                         f"to start again over it, or choose another {setting}")


def generate_once(root, done_marker: str, write: Callable[[Path], None]) -> Path:
    """A generated dataset under ``root``, made once and atomically: ``write`` fills a staging
    folder beside it, which is then renamed (concurrent processes may race here; the first
    rename wins). ``done_marker``: a file that exists once the dataset does."""
    root = Path(root)
    if (root / done_marker).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    write(staging)
    try:
        staging.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return root
