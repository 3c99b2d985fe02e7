"""A real Tryton 8.0 server on loopback, for ``seamline demo`` and the tests: built once per machine.

Tryton is GPL, so it is never imported here: it runs in its own virtualenv as a separate process,
and seamline only speaks JSON-RPC to it. What is built, where, and how long it takes (the first run
on a machine pays for the install):

1. a virtualenv with the pinned :data:`REQUIREMENTS` from PyPI, under ``~/.cache/seamline/tryton-8.0/``
   (or ``$SEAMLINE_TRYTON_CACHE``), keyed by the requirement list and the Python version (~10 s once);
2. a seeded template SQLite database beside it, keyed by the requirements and the content of
   :mod:`connectors.tryton.seed` (``trytond-admin`` activates sale and stock, ~20 s, then the seed,
   ~5 s; once);
3. per server: a copy of the template in a scratch folder and ``trytond -d <db>`` on a loopback
   port (~1.5 s to the first answer); ``reset()`` stops it, restores the template and starts it
   again on the same port (~1.5 s).

The build takes a file lock, so parallel processes build once and then share it. When the install
cannot happen (no network to PyPI), :class:`TrytonUnavailable` says exactly what to run by hand.

Use :func:`running` for a seeded server that lives as long as a ``with`` block::

    with running(port=8000) as server:
        print(server.url, server.database, server.user, server.password)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from connectors.tryton.client import from_tryton, to_tryton

__all__ = [
    "API_LOGIN",
    "API_PASSWORD",
    "REQUIREMENTS",
    "RpcClient",
    "TrytonInstall",
    "TrytonRpcError",
    "TrytonServer",
    "TrytonUnavailable",
    "cache_root",
    "ensure_install",
    "running",
]

REQUIREMENTS = (
    "trytond>=8.0,<8.1",
    "trytond_sale>=8.0,<8.1",
    "trytond_stock>=8.0,<8.1",
    "trytond_product>=8.0,<8.1",
    "trytond_party>=8.0,<8.1",
    "trytond_account>=8.0,<8.1",
    "trytond_account_invoice>=8.0,<8.1",
    "proteus>=8.0,<8.1",
)
DATABASE = "seamline"
API_LOGIN = "api"
API_PASSWORD = "seamline-api-password"  # a local demo/test server on loopback; not a secret
ADMIN_PASSWORD = "seamline-admin-password"
# Executed by the Tryton venv's python, never imported (it imports GPL code): see its docstring.
SEED_SCRIPT = Path(__file__).with_name("seed.py")
INSTALL_TIMEOUT = 600.0
START_TIMEOUT = 60.0
PIP_INSTALL = ("install", "-q", "--disable-pip-version-check", "--no-input")
# trytond's own launcher, serving one request at a time: Tryton's SQLite backend is not safe for
# concurrent writers (two parties created at once can draw the same party code from its emulated
# sequence and one fails "The code on party must be unique"); on PostgreSQL, real deployments run it
# threaded or under a WSGI server.
SERVE_ONE_AT_A_TIME = """
import sys
import werkzeug.serving

_run_simple = werkzeug.serving.run_simple


def run_simple(*args, **kwargs):
    kwargs["threaded"] = False
    return _run_simple(*args, **kwargs)


werkzeug.serving.run_simple = run_simple
from trytond.cli import main

sys.argv[0] = "trytond"
sys.exit(main())
"""
ADMIN_STEPS = ("--all", "-u", "sale", "stock", "--activate-dependencies", "--email", "admin@example.com")

Progress = Callable[[str], None]


class TrytonUnavailable(RuntimeError):
    """Tryton could not be installed or started; the message says what to run."""


class TrytonRpcError(RuntimeError):
    """An error answer seen by :class:`RpcClient` (the connector has its own classification)."""

    def __init__(self, method: str, error: Any) -> None:
        self.error = error
        super().__init__(f"{method}: {error!r}")


# -- the install: a virtualenv and a seeded template, cached per machine ---------------------------


def cache_root() -> Path:
    """Where the virtualenv and the template live: ``$SEAMLINE_TRYTON_CACHE`` or ``~/.cache/seamline``."""
    configured = os.environ.get("SEAMLINE_TRYTON_CACHE")
    base = Path(configured) if configured else Path.home() / ".cache" / "seamline"
    return base / "tryton-8.0"


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _quiet(message: str) -> None:
    """The default progress reporter: say nothing."""


@dataclass(frozen=True)
class TrytonInstall:
    """The cached virtualenv, the seeded template, what the seed created and how long building took."""

    venv: Path
    template: Path
    meta: dict[str, Any]
    timings: dict[str, float]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def script(self, name: str) -> list[str]:
        # run the console script with the venv's python: no dependence on its shebang line
        return [str(self.python), str(self.venv / "bin" / name)]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment for Tryton's processes: ours, less what would leak our Python into theirs."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env.update(extra)
    return env


def _install_help(venv: Path, why: str) -> str:
    return (
        f"Tryton 8.0 could not be installed: {why}\n"
        "Seamline's Tryton demo and tests need it from PyPI once per machine (about 10 s, 90 MB). "
        "With network access, run:\n"
        f"    {sys.executable} -m venv {venv}\n"
        f"    {venv}/bin/pip install {' '.join(repr(r) for r in REQUIREMENTS)}\n"
        f"    touch {venv}/.seamline-ready\n"
        "or set SEAMLINE_TRYTON_CACHE to a folder that already holds tryton-8.0/ from another machine."
    )


def _run(command: list[str], *, what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env, cwd=cwd, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrytonUnavailable(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise TrytonUnavailable(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _our_pip_can_target() -> bool:
    """Whether our own pip can install into another interpreter (``pip --python``, pip >= 22.3).

    An installed seamline may live in an environment without pip (uv, some pipx setups); then the
    virtualenv gets its own pip instead, which costs a few seconds more.
    """
    if importlib.util.find_spec("pip") is None:
        return False
    try:
        major, minor = (int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (22, 3)


def _ensure_venv(venv: Path, timings: dict[str, float], progress: Progress) -> None:
    marker = venv / ".seamline-ready"
    if marker.exists():
        return
    if venv.exists():
        shutil.rmtree(venv)  # a build that did not finish
    progress(f"Installing Tryton 8.0 from PyPI into {venv} (once per machine, about 10 s)…")
    started = time.perf_counter()
    venv_python = venv / "bin" / "python"
    try:
        if _our_pip_can_target():
            # no pip inside (bootstrapping it costs ~4 s): our pip installs into the venv's interpreter
            _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], what="creating the virtualenv")
            pip = [sys.executable, "-m", "pip", "--python", str(venv_python)]
        else:
            _run([sys.executable, "-m", "venv", str(venv)], what="creating the virtualenv")
            pip = [str(venv_python), "-m", "pip"]
        _run([*pip, *PIP_INSTALL, *REQUIREMENTS], what="pip install of Tryton", env=_clean_env())
    except TrytonUnavailable as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise TrytonUnavailable(_install_help(venv, str(exc))) from exc
    marker.touch()
    timings["venv_install"] = time.perf_counter() - started


def _write_config(folder: Path, port: int) -> Path:
    (folder / "db").mkdir(parents=True, exist_ok=True)
    config = folder / "trytond.conf"
    config.write_text(
        f"[web]\nlisten = 127.0.0.1:{port}\n[database]\nuri = sqlite://\npath = {folder / 'db'}\n",
        encoding="utf-8",
    )
    return config


def _copy_sqlite(source: Path, target: Path, *, immutable: bool = False) -> None:
    """A consistent copy of a SQLite file (the backup API, so a WAL left beside it cannot leak in).

    ``immutable``: the source never changes (the template), so it is opened without its WAL and
    shared-memory files, which several processes would otherwise create and contend for.
    """
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    uri = f"file:{source}?immutable=1" if immutable else f"file:{source}"
    with (
        contextlib.closing(sqlite3.connect(uri, uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def _ensure_template(
    install_venv: Path, template: Path, timings: dict[str, float], progress: Progress
) -> dict[str, Any]:
    meta_path = template.with_suffix(".json")
    if template.exists() and meta_path.exists():
        return dict(json.loads(meta_path.read_text(encoding="utf-8")))
    python = str(install_venv / "bin" / "python")
    progress("Creating and seeding the Tryton demo database (once, about 30 s)…")
    with tempfile.TemporaryDirectory(prefix="build-", dir=template.parent) as scratch:
        folder = Path(scratch)
        config = _write_config(folder, 0)
        (folder / "db" / f"{DATABASE}.sqlite").touch()  # the sqlite backend wants the file to exist
        password_file = folder / "adminpass"
        password_file.write_text(ADMIN_PASSWORD, encoding="utf-8")
        env = _clean_env(TRYTOND_CONFIG=str(config), TRYTONPASSFILE=str(password_file))
        started = time.perf_counter()
        _run(
            [python, str(install_venv / "bin" / "trytond-admin"), "-c", str(config), "-d", DATABASE, *ADMIN_STEPS],
            what="trytond-admin (create the database, activate sale and stock)",
            env=env,
        )
        timings["database_init"] = time.perf_counter() - started
        started = time.perf_counter()
        seeded = _run(
            # -P: the script's folder (our package) is not put on Tryton's sys.path, so our modules
            # (client.py, …) can never shadow one of Tryton's imports
            [python, "-P", str(SEED_SCRIPT)],
            what=f"seeding the Tryton database ({SEED_SCRIPT})",
            env=_clean_env(
                TRYTOND_CONFIG=str(config), DB_NAME=DATABASE, API_LOGIN=API_LOGIN, API_PASSWORD=API_PASSWORD
            ),
        )
        timings["seed"] = time.perf_counter() - started
        meta = json.loads(seeded.strip().splitlines()[-1])
        partial = template.with_suffix(".partial")
        _copy_sqlite(folder / "db" / f"{DATABASE}.sqlite", partial)
        partial.replace(template)
        meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return dict(meta)


def ensure_install(progress: Progress = _quiet) -> TrytonInstall:
    """The cached virtualenv and seeded template, built first if this machine has none.

    ``progress`` is told, in a sentence, about each slow step before it runs (nothing when cached).
    """
    root = cache_root()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = root / f"venv-py{python}-{_key(python, *REQUIREMENTS)}"
    seed = SEED_SCRIPT.read_text(encoding="utf-8")
    template = root / f"template-{_key(python, *REQUIREMENTS, *ADMIN_STEPS, seed, API_PASSWORD, ADMIN_PASSWORD)}.sqlite"
    timings: dict[str, float] = {}
    with _locked(root / ".build.lock"):
        _ensure_venv(venv, timings, progress)
        meta = _ensure_template(venv, template, timings, progress)
    return TrytonInstall(venv=venv, template=template, meta=meta, timings=timings)


# -- a running server ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int) -> None:
    """Fail before starting trytond when the port is taken: its own error is buried in its log."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise TrytonUnavailable(
                f"cannot start Tryton on 127.0.0.1:{port}: {exc.strerror or exc}; "
                "stop what is using that port or choose another one (0 picks a free port)"
            ) from exc


@dataclass
class TrytonServer:
    """One ``trytond`` process on loopback over a private copy of the seeded database."""

    install: TrytonInstall
    folder: Path
    port: int = field(default_factory=_free_port)
    database: str = DATABASE
    user: str = API_LOGIN
    password: str = API_PASSWORD
    admin_password: str = ADMIN_PASSWORD
    timings: dict[str, float] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def meta(self) -> dict[str, Any]:
        """What the seed created: product ids by code, party ids by email, company, warehouse…"""
        return self.install.meta

    @property
    def db_file(self) -> Path:
        return self.folder / "db" / f"{self.database}.sqlite"

    @property
    def log_file(self) -> Path:
        return self.folder / "trytond.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        config = _write_config(self.folder, self.port)
        if not self.db_file.exists():
            _copy_sqlite(self.install.template, self.db_file, immutable=True)
        started = time.perf_counter()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.install.python), "-c", SERVE_ONE_AT_A_TIME, "-c", str(config), "-d", self.database],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
            )
        self._wait_until_ready()
        self.timings["start"] = time.perf_counter() - started

    def _wait_until_ready(self) -> None:
        process = self._process
        assert process is not None, "start() launches the process first"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                raise TrytonUnavailable(
                    f"trytond exited with {process.returncode} while starting; its log:\n{self._log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.post(
                    f"{self.url}/rpc/", json={"id": 0, "method": "common.server.version", "params": []}, timeout=2
                )
                if answer.status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise TrytonUnavailable(
            f"trytond did not answer on {self.url}/rpc/ within {START_TIMEOUT:g}s:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def reset(self) -> None:
        """Back to the freshly seeded database: stop, restore the template, start on the same port."""
        started = time.perf_counter()
        self.stop()
        # SQLite runs in WAL mode: a stale -wal beside the fresh copy would replay old changes onto it
        _copy_sqlite(self.install.template, self.db_file, immutable=True)
        self.start()
        self.timings["reset"] = time.perf_counter() - started

    def client(self, login: str = "admin", password: str | None = None) -> RpcClient:
        """A logged-in client (admin by default): to change data as a Tryton user would."""
        return RpcClient(self.url, self.database, login, password or self.admin_password)

    def close(self) -> None:
        """Stop the server and delete its scratch folder (its database and log)."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def running(port: int = 0, *, progress: Progress = _quiet) -> Iterator[TrytonServer]:
    """A started, freshly seeded server for the ``with`` block (``port`` 0: a free one), then stopped.

    Builds the cached install first when this machine has none (``progress`` hears about it); raises
    :class:`TrytonUnavailable` with what to run when that or the start fails. The server's database
    is a private copy of the template, deleted on the way out.
    """
    if port:
        _check_port_free(port)
    install = ensure_install(progress)
    folder = Path(tempfile.mkdtemp(prefix="seamline-tryton-"))
    server = TrytonServer(install, folder, port=port) if port else TrytonServer(install, folder)
    server.timings.update(install.timings)
    try:
        server.start()
        yield server
    finally:
        server.close()


class RpcClient:
    """A small synchronous JSON-RPC client: log in, call, decode Tryton's tagged values.

    For tests and the demo, to act as a Tryton user would; the connector has its own async client.
    """

    def __init__(self, url: str, database: str, login: str, password: str) -> None:
        self.endpoint = f"{url}/{database}/rpc/"
        result = self._post("common.db.login", [login, {"password": password}, "en"], {})
        user_id, session = result[0], result[1]
        token = base64.b64encode(f"{login}:{user_id}:{session}".encode()).decode()
        self.headers = {"Authorization": f"Session {token}"}
        self.context: dict[str, Any] = self._post("model.res.user.get_preferences", [True, {}], self.headers)

    def _post(self, method: str, params: list[Any], headers: dict[str, str]) -> Any:
        body = json.dumps({"id": 1, "method": method, "params": to_tryton(params)})
        response = httpx.post(
            self.endpoint, content=body, headers={**headers, "Content-Type": "application/json"}, timeout=30
        )
        response.raise_for_status()
        answer = json.loads(response.content, object_hook=from_tryton)
        if answer.get("error") is not None:
            raise TrytonRpcError(method, answer["error"])
        return answer.get("result")

    def call(self, model: str, method: str, *params: Any, context: dict[str, Any] | None = None) -> Any:
        return self._post(f"model.{model}.{method}", [*params, {**self.context, **(context or {})}], self.headers)

    def search_read(
        self, model: str, domain: list[Any], fields: list[str], context: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return list(self.call(model, "search_read", domain, 0, None, None, fields, context=context))

    def count(self, model: str, domain: list[Any], context: dict[str, Any] | None = None) -> int:
        return int(self.call(model, "search_count", domain, context=context))
