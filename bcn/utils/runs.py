"""What both frameworks' launchers and toy datasets share about folders on disk (not BCN
itself, so not in bcn's namespace)."""
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional


def refuse_to_overwrite(run_dir: str, setting: str) -> None:
    """Never overwrite a run's checkpoints by accident: both frameworks leave a last_checkpoint
    file in a run's folder. ``setting`` names the option that chose the folder."""
    last = Path(run_dir) / "last_checkpoint"
    if last.exists():
        raise SystemExit(f"{run_dir} already holds a training run (last checkpoint "
                         f"{last.read_text().strip()}): pass --resume to continue it, --overwrite "
                         f"to start a new one (the old run is moved aside), or choose another {setting}")


def prepare_run_dir(run_dir: str, setting: str, *, resume: bool, overwrite: bool,
                    move: bool = True) -> Optional[Path]:
    """Before anything writes into ``run_dir`` (launchers call this before the frameworks set
    up): resuming, or a folder without a run, keep it as it is; a folder with a run is refused
    (refuse_to_overwrite), or with ``overwrite`` moved aside whole to a dated sibling folder,
    so that the new run starts in an empty one and no file of the two runs mixes. ``move``:
    whether this process moves it (one process of a multi-process job). Returns where the old
    run went."""
    if resume:
        return None
    folder = Path(run_dir)
    if not overwrite:
        refuse_to_overwrite(run_dir, setting)
        return None
    if not move or not folder.is_dir() or not any(folder.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.replaced-{stamp}")
    suffix = 1
    while target.exists():
        target = folder.with_name(f"{folder.name}.replaced-{stamp}-{suffix}")
        suffix += 1
    folder.rename(target)
    print(f"--overwrite: moved the previous run in {folder} to {target}", file=sys.stderr, flush=True)
    return target


def generate_once(root, done_marker: str, write: Callable[[Path], None]) -> Path:
    """A generated dataset under ``root``, made once and atomically: ``write`` fills a staging
    folder beside it, which is then renamed (concurrent processes may race here; the first
    rename wins). ``done_marker``: a file that exists once the dataset does. A folder that
    exists without it is not ours -- a real dataset, say -- and is never written into."""
    root = Path(root)
    if (root / done_marker).exists():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SystemExit(_not_ours(root, done_marker))
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    write(staging)
    try:
        staging.rename(root)
    except OSError:  # another process finished first, or a folder appeared that is not ours
        shutil.rmtree(staging, ignore_errors=True)
        if not (root / done_marker).exists():
            raise SystemExit(_not_ours(root, done_marker)) from None
    return root


def _not_ours(root: Path, done_marker: str) -> str:
    return (f"{root} exists and is not a generated toy dataset (it has no {done_marker}): the toy "
            "data is generated only into a new or empty folder, never into another dataset's; "
            "point the toy config at another folder")
