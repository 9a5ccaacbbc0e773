import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# Without a GPU, Triton kernels run in Triton's CPU interpreter (read when a kernel is defined, so before any
# module imports triton; torch itself does not).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `make test` runs two pytest-xdist workers (most of the suite's time is single-threaded ONNX export): the
# machine's cores are shared between them instead of each worker taking two threads.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 2) // WORKERS))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)


def shared_export_root(uid: str) -> Path:
    """The folder the xdist workers of run `uid` share their exports in (tests/test_export.py EXPORT_ROOT)."""
    return Path(tempfile.gettempdir()) / f"vita_export_test_{uid}"


def pytest_configure(config):
    """An xdist controller fixes the run's id itself (workers get it as PYTEST_XDIST_TESTRUNUID) so that it can
    remove the export folder its workers shared when the run ends (tests/test_export.py EXPORT_ROOT)."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        if not config.option.testrunuid:
            config.option.testrunuid = uuid.uuid4().hex


def pytest_unconfigure(config):
    uid = getattr(config.option, "testrunuid", None)
    if uid and not hasattr(config, "workerinput"):
        shutil.rmtree(shared_export_root(uid), ignore_errors=True)
