"""Where minipeft keeps the files it ships in `data/`.

The tokenizer, the task files and the pretrained checkpoints are generated once by
`python -m minipeft build-data` and committed, so a student never has to wait for them.
Every path is resolved relative to this package, so the library works from any directory.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
TASKS_DIR = DATA_DIR / "tasks"
CHECKPOINT_DIR = DATA_DIR / "checkpoints"
TOKENIZER_PATH = DATA_DIR / "tokenizer.json"

# Printed by every "file missing or broken" error, so the fix is always one copy-paste away.
REBUILD_COMMAND = "python -m minipeft build-data"


class DataFileError(RuntimeError):
    """A file under data/ is missing or unreadable; the message says how to rebuild it."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}. Rebuild the shipped data with `{REBUILD_COMMAND}`.")
        self.path = path
