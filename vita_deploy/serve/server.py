"""Run the `tritonserver` binary bundled in the `nvidia-pytriton` wheel, on loopback, with its python backend.

The wheel (installed with `pip install --no-deps nvidia-pytriton`, see the Makefile) ships
`pytriton/tritonserver/bin/tritonserver`, the python backend (`backends/python/libtriton_python.so`) and one
python-backend stub per Python version (`python_backend_stubs/3.X/triton_python_backend_stub`), but no
onnxruntime or tensorrt backend (those come with NVIDIA's server container). As pytriton itself does, a
backend folder is assembled per server with the stub of *this* interpreter's version (here as links, not copies).

The stub embeds libpython. Two facts decide which Python it runs:
- the dynamic loader picks `libpython3.X.so.1.0`: without LD_LIBRARY_PATH it finds the system one (a different
  3.X patch release than the venv's stdlib, failing with "'_thread.RLock' object has no attribute
  '_recursion_count'"), so LD_LIBRARY_PATH starts with this interpreter's LIBDIR;
- the embedded interpreter takes its prefix from the library (the base installation, not the venv), so the venv's
  site-packages and the folder holding `vita_deploy` are put on PYTHONPATH (`.pth` files such as an editable
  install's finder are not run from PYTHONPATH entries, hence the package folder itself).
EXECUTION_ENV_PATH (a conda-pack archive per model) is the other way Triton picks an interpreter; a venv needs none.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from vita_deploy.errors import InputError

WHEEL = "nvidia-pytriton"
WHEEL_VERSION = "0.7.0"


class ServerError(InputError):
    """The bundled server is missing, did not start or did not become ready; the message says why and the fix."""


def _dist_root() -> Path:
    """The `pytriton/tritonserver` folder of the installed wheel (found through its metadata; the pytriton
    Python package is never imported: it needs numpy < 2)."""
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise ServerError(f"the {WHEEL} wheel (which bundles the tritonserver binary) is not installed: run "
                          f"`make install-dev` or `pip install --no-deps {WHEEL}=={WHEEL_VERSION}`") from None
    return Path(dist.locate_file("pytriton/tritonserver"))


def tritonserver_binary() -> Path:
    """Path of the bundled `tritonserver` executable."""
    path = _dist_root() / "bin" / "tritonserver"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ServerError(f"{path} is missing or not executable: reinstall with "
                          f"`pip install --no-deps --force-reinstall {WHEEL}=={WHEEL_VERSION}`")
    return path


def python_stub(version: str | None = None) -> Path:
    """The python-backend stub built for Python `version` ("3.11"; default: this interpreter's)."""
    version = version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    stubs = _dist_root() / "python_backend_stubs"
    path = stubs / version / "triton_python_backend_stub"
    if not path.is_file():
        have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise ServerError(f"{WHEEL} has no python-backend stub for Python {version} (it has {have}): run the "
                          "server from a venv of one of those versions")
    return path


def make_backend_dir(work_dir: str | Path) -> Path:
    """`work_dir/backends/python/` with the python backend library, its utils module and this Python's stub
    (symlinks); returns `work_dir/backends` for `--backend-directory`."""
    src = _dist_root() / "backends" / "python"
    dst = Path(work_dir) / "backends" / "python"
    dst.mkdir(parents=True, exist_ok=True)
    for link, target in (("libtriton_python.so", src / "libtriton_python.so"),
                         ("triton_python_backend_utils.py", src / "triton_python_backend_utils.py"),
                         ("triton_python_backend_stub", python_stub())):
        if not (dst / link).exists():
            os.symlink(target, dst / link)
    return dst.parent


def stub_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver so that its python stubs run this interpreter's Python and can import
    vita_deploy (see the module docstring)."""
    import vita_deploy

    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    package_root = str(Path(vita_deploy.__file__).resolve().parent.parent)
    site = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]
    paths = [package_root, *dict.fromkeys(site)]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH")) if p)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class TritonServer:
    """The bundled tritonserver on 127.0.0.1 serving `repository`; a context manager that stops it by pid.

    Metrics are off; HTTP and gRPC listen on loopback only. Server output goes to `log_path`."""

    repository: Path
    http_port: int = 0  # 0: a free port
    grpc_port: int = 0
    host: str = "127.0.0.1"
    log_verbose: int = 0
    exit_timeout_s: int = 5
    extra_args: tuple[str, ...] = ()
    work_dir: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    start_s: float | None = field(default=None, init=False)  # launch -> ready, seconds

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return Path(self.work_dir) / "tritonserver.log"

    def command(self) -> list[str]:
        return [str(tritonserver_binary()), "--model-repository", str(Path(self.repository).resolve()),
                "--backend-directory", str(make_backend_dir(self.work_dir)),
                "--http-address", self.host, "--http-port", str(self.http_port),
                "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
                "--allow-metrics", "false", "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
                "--disable-auto-complete-config", "--strict-readiness", "true", "--exit-on-error", "true",
                # on SIGTERM: wait at most this long for in-flight requests and open client connections
                "--exit-timeout-secs", str(self.exit_timeout_s),
                "--log-verbose", str(self.log_verbose), *self.extra_args]

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        """Launch and wait until /v2/health/ready answers 200 (all models loaded); raises ServerError with the
        log's tail if the server exits or is not ready in time."""
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="vita_triton_"))
        self.http_port = self.http_port or free_port(self.host)
        self.grpc_port = self.grpc_port or free_port(self.host)
        log = open(self.log_path, "ab")
        t0 = time.perf_counter()
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=stub_environment(),
                                        start_new_session=True)
        log.close()
        url = f"http://{self.http_url}/v2/health/ready"
        while time.perf_counter() - t0 < timeout_s:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting:\n"
                                  f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        self.start_s = time.perf_counter() - t0
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the server (its own process group: the server and its python stubs), SIGKILL after
        `timeout_s`; returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # stubs left behind by a killed server
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.process.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
