"""``reconciler job metrics`` and ``reconciler metrics`` as whole processes, on SQLite and on a
real PostgreSQL server in a disposable host; and the job as a oneshot unit under systemd."""

from __future__ import annotations

import json
import os
import pty
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.config import Settings
from reconciler.core.hostmetrics import FIVE_MIN, HOURLY, RAW, Retention, Sample
from reconciler.devtools import sandbox
from reconciler.errors import JobError
from reconciler.store import metric_store
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE, SRC_INSIDE, booted_host

CLI = str(Path(sys.executable).parent / "reconciler")
PG_PORT = 54329  # not 5432: the host shares the machine's network namespace


def _env() -> dict[str, str]:
    """This environment without RECONCILER_* settings and no journald: the summary is printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_JOURNAL_SOCKET"] = "/nonexistent/journal-socket"
    return env


def reconciler(*argv: str, config: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [CLI, *argv, "--config", str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\nhost = "test-host"\n')
    return path


def latest(rows: list[tuple[str, str, float]]) -> dict[tuple[str, str], float]:
    return {(metric, label): value for metric, label, value in rows}


def check_sane(values: dict[tuple[str, str], float]) -> None:
    assert 0 <= values[("cpu.percent", "")] <= 100
    assert 0 < values[("mem.used_bytes", "")] < values[("mem.total_bytes", "")]
    assert 0 <= values[("mem.used_percent", "")] <= 100
    assert values[("load.1", "")] >= 0
    mounts = [label for metric, label in values if metric == "disk.used_percent"]
    assert mounts, "no disk mount measured"
    assert all(0 <= values[("disk.used_percent", m)] <= 100 for m in mounts)
    assert all(v >= 0 for (metric, _), v in values.items() if metric.endswith("_bps"))
    interfaces = {
        line.split(":")[0].strip()
        for line in Path("/proc/net/dev").read_text().splitlines()[2:]
        if line.split(":")[0].strip() != "lo"
    }
    if interfaces:
        assert {lbl for m, lbl in values if m == "net.rx_bps"} == {f"iface={i}" for i in interfaces}
    assert ("net.rx_bps", "iface=lo") not in values


# --- SQLite, whole processes --------------------------------------------------------------


def test_job_twice_records_sane_values_second_from_deltas(config: Path, tmp_path: Path) -> None:
    first = reconciler("job", "metrics", config=config)
    assert "(window)" in first.stdout  # no previous counters: a 100 ms window
    time.sleep(1.1)  # samples are per second
    second = reconciler("job", "metrics", config=config)
    assert "(previous run)" in second.stdout, second.stdout

    db = tmp_path / "state/metrics.db"
    assert db.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute(
            "SELECT s.ts, m.metric, m.label, s.value FROM metric_samples s "
            "JOIN metric_series m ON m.id = s.series WHERE s.res = 0 AND m.host = 'test-host' "
            "ORDER BY s.ts"
        ).fetchall()
    times = sorted({ts for ts, *_ in rows})
    assert len(times) == 2
    check_sane(latest([(m, lbl, v) for ts, m, lbl, v in rows if ts == times[-1]]))
    assert [m for ts, m, _, _ in rows if m == "cpu.percent"] == ["cpu.percent"] * 2


def test_metrics_json_since(config: Path) -> None:
    reconciler("job", "metrics", config=config)
    out = json.loads(reconciler("metrics", "--json", "--since", "1h", config=config).stdout)
    assert out["host"] == "test-host"
    assert out["resolution_sec"] == 60
    assert out["until"] - out["since"] == 3600
    by = {(s["metric"], tuple(s["labels"].items())): s for s in out["series"]}
    cpu = by[("cpu.percent", ())]
    assert len(cpu["points"]) == 1 and 0 <= cpu["last"] <= 100
    assert any(metric == "disk.used_percent" for metric, _ in by)


def test_metrics_table_with_sparklines_on_a_terminal(config: Path) -> None:
    reconciler("job", "metrics", config=config)
    piped = reconciler("metrics", "--since", "30m", config=config).stdout
    assert "cpu %" in piped and "TREND" not in piped

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [CLI, "metrics", "--since", "30m", "--config", str(config)],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=_env(),
            timeout=60,
            check=False,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    shown = b"".join(chunks).decode()
    assert "TREND" in shown
    assert any(bar in shown for bar in "▁▂▃▄▅▆▇█")


def test_empty_store_and_bad_since(config: Path, tmp_path: Path) -> None:
    out = reconciler("metrics", config=config).stdout
    assert "no metrics for test-host" in out
    assert not (tmp_path / "state").exists()  # reading creates no store
    assert json.loads(reconciler("metrics", "--json", config=config).stdout)["series"] == []
    bad = reconciler("metrics", "--since", "soon", config=config, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "reconciler metrics: --since: expected a duration such as 30m, 1h or 2d, got 'soon'"
    ]


def test_unknown_metrics_key_is_refused(config: Path) -> None:
    config.write_text(config.read_text() + '[metrics]\nmount = ["/"]\n')
    proc = reconciler("job", "metrics", config=config, check=False)
    assert proc.returncode == 2
    assert "metrics.mount: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- retention and downsampling on synthetic rows (both stores) ---------------------------

NOW = 1_750_000_000 // 3600 * 3600 + 1830  # fixed: 30 min 30 s past an hour
DAY = 86400


def _rows(store: metric_store.MetricStore, res: int) -> dict[int, float]:
    return {r.ts: r.value for r in store.query("h", 0, res) if r.metric == "cpu.percent"}


def check_retention(settings: Settings) -> None:
    store = metric_store.open_store(settings)
    keep = Retention()  # raw 48 h, 5 min 30 d, 1 h 365 d
    old = (NOW - 3 * DAY) // 3600 * 3600  # raw, past 48 h: rolled up, then deleted
    try:
        with store.transaction() as tx:
            for res, ts, value in [
                (HOURLY, NOW - 400 * DAY, 1.0),  # past a year: deleted
                (HOURLY, NOW // 3600 * 3600 - 100 * DAY, 2.0),  # kept
                (FIVE_MIN, NOW // 300 * 300 - 40 * DAY, 3.0),  # past 30 d: deleted
                (FIVE_MIN, NOW // 300 * 300 - 10 * DAY, 4.0),  # kept
                (RAW, old, 10.0),
                (RAW, old + 60, 20.0),
                (RAW, old + 120, 30.0),  # one 5-minute bucket: average 20
                (RAW, old + 300, 50.0),  # the next bucket
                (RAW, NOW - 900, 70.0),  # recent raw: kept; bucket complete
                (RAW, NOW - 60, 90.0),  # bucket still open: not rolled up yet
            ]:
                store.write(tx, "h", ts, [Sample("cpu.percent", value)], res=res)
        with store.transaction() as tx:
            done = store.maintain(tx, NOW, keep)
        assert done == metric_store.Maintenance(rolled_up=3 + 3, deleted=4 + 1 + 1)

        assert _rows(store, RAW) == {NOW - 900: 70.0, NOW - 60: 90.0}
        five = _rows(store, FIVE_MIN)
        assert five == {
            NOW // 300 * 300 - 10 * DAY: 4.0,
            old: 20.0,
            old + 300: 50.0,
            (NOW - 900) // 300 * 300: 70.0,
        }
        hourly = _rows(store, HOURLY)
        assert hourly == {
            NOW // 3600 * 3600 - 100 * DAY: 2.0,
            (NOW // 300 * 300 - 40 * DAY) // 3600 * 3600: 3.0,  # rolled up before deletion
            (NOW // 300 * 300 - 10 * DAY) // 3600 * 3600: 4.0,
            old: 35.0,  # the average of its two 5-minute averages
        }  # the current hour is not complete: not rolled up

        with store.transaction() as tx:  # incremental: nothing new, nothing to do
            assert store.maintain(tx, NOW, keep) == metric_store.Maintenance(0, 0)
        with store.transaction() as tx:  # the open bucket completes 5 minutes later
            assert store.maintain(tx, NOW + 300, keep).rolled_up == 1
        assert _rows(store, FIVE_MIN)[(NOW - 60) // 300 * 300] == 90.0
    finally:
        store.close()


def test_retention_and_downsampling_sqlite(tmp_path: Path) -> None:
    check_retention(Settings(state_dir=tmp_path))


def test_sqlite_store_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    """The schema is versioned and migrated (db.migrate); a newer file is never rewritten."""
    settings = Settings(state_dir=tmp_path)
    metric_store.open_store(settings).close()
    conn = sqlite3.connect(tmp_path / "metrics.db")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == len(metric_store.SQLITE_MIGRATIONS)
        conn.execute("PRAGMA user_version = 99")
    finally:
        conn.close()
    with pytest.raises(JobError, match="schema version 99 is newer"):
        metric_store.open_store(settings)


# --- PostgreSQL in a disposable host ------------------------------------------------------


@pytest.fixture(scope="module")
def pg_host() -> Iterator[sandbox.Host]:
    """A host of its own with PostgreSQL unmasked, on a unix socket only (port PG_PORT).

    Always the machine's root (ci/test installs PostgreSQL there), also when
    RECONCILER_TEST_ROOT boots the others on Debian 13: the job under test runs here, the
    server is only its database, and PostgreSQL with its LLVM, ICU and Perl would add about
    200 MB to that root."""
    with booted_host(None, unmask=["postgresql.service"]) as h:
        clusters = h.run(["pg_lsclusters", "--no-header"], check=False)
        if clusters.returncode == 127 or not (h.root / "usr/lib/postgresql").is_dir():
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL is not installed (CI=true): apt-get install postgresql")
            pytest.skip("PostgreSQL is not installed on this machine")
        if not clusters.stdout.strip():  # the package is there but no cluster: make one
            version = sorted(p.name for p in (h.root / "usr/lib/postgresql").iterdir())[-1]
            h.run(["pg_createcluster", version, "main"])
            clusters = h.run(["pg_lsclusters", "--no-header"])
        version, name = clusters.stdout.split()[:2]
        conf = h.root / f"etc/postgresql/{version}/{name}"
        (conf / "conf.d").mkdir(exist_ok=True)
        (conf / "conf.d/zz-reconciler-test.conf").write_text(
            f"listen_addresses = ''\nport = {PG_PORT}\n"
        )
        hba = conf / "pg_hba.conf"
        hba.write_text("local all metrics scram-sha-256\n" + hba.read_text())
        h.systemctl("restart", f"postgresql@{version}-{name}.service")
        yield h


def psql(host: sandbox.Host, sql: str, db: str = "postgres") -> str:
    argv = ["runuser", "-u", "postgres", "--", "psql", "-p", str(PG_PORT), "-d", db, "-Atc", sql]
    return host.run(argv).stdout


@pytest.fixture(scope="module")
def pg_password(pg_host: sandbox.Host) -> str:
    password = secrets.token_hex(12)
    psql(pg_host, f"CREATE ROLE metrics LOGIN PASSWORD '{password}'")
    return password


@pytest.fixture
def pg_url(pg_host: sandbox.Host, pg_password: str) -> str:
    """A fresh database per test, reached over the host's socket directory from outside."""
    db = f"metrics_{secrets.token_hex(4)}"
    psql(pg_host, f"CREATE DATABASE {db} OWNER metrics")
    sockets = pg_host.root / "run/postgresql"
    return f"postgresql://metrics:{pg_password}@/{db}?host={sockets}&port={PG_PORT}"


@pytest.mark.host
def test_retention_and_downsampling_postgres(pg_url: str) -> None:
    check_retention(Settings(database_url=pg_url))


@pytest.mark.host
def test_postgres_schema_version_recorded_and_old_store_adopted(pg_url: str) -> None:
    """A store made before versions were kept (tables, no metric_schema) is adopted with its
    rows; the version is recorded once; a newer version is refused, the data untouched."""
    import psycopg

    legacy = [ddl for script in metric_store.POSTGRES_MIGRATIONS[:1] for ddl in script]
    with psycopg.connect(pg_url) as conn:
        for ddl in legacy:
            conn.execute(ddl.encode())
        conn.execute(b"INSERT INTO metric_state (key, value) VALUES ('old', 'kept')")
    settings = Settings(database_url=pg_url)
    for _ in range(2):  # the second open finds the version and has nothing to do
        metric_store.open_store(settings).close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(b"SELECT id, version FROM metric_schema").fetchall() == [
            (1, len(metric_store.POSTGRES_MIGRATIONS))
        ]
        assert conn.execute(b"SELECT value FROM metric_state").fetchall() == [("kept",)]
        conn.execute(b"UPDATE metric_schema SET version = 99")
    with pytest.raises(JobError, match="schema version 99 is newer"):
        metric_store.open_store(settings)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(b"SELECT version FROM metric_schema").fetchall() == [(99,)]


@pytest.mark.host
def test_job_into_postgres(pg_url: str, pg_password: str, tmp_path: Path) -> None:
    import psycopg

    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nhost = "pg-host"\ndatabase_url = "{pg_url}"\n'
    )
    first = reconciler("job", "metrics", config=config)
    assert "into postgresql" in first.stdout and "(window)" in first.stdout
    time.sleep(1.1)
    second = reconciler("job", "metrics", config=config)
    assert "(previous run)" in second.stdout
    assert not (tmp_path / "state/metrics.db").exists()

    with psycopg.connect(pg_url) as conn:
        rows: list[Any] = conn.execute(
            "SELECT s.ts, m.metric, m.label, s.value FROM metric_samples s "
            "JOIN metric_series m ON m.id = s.series WHERE s.res = 0 AND m.host = 'pg-host'"
        ).fetchall()
    times = sorted({r[0] for r in rows})
    assert len(times) == 2
    check_sane(latest([(m, lbl, v) for ts, m, lbl, v in rows if ts == times[-1]]))

    shown = reconciler("metrics", "--json", "--since", "1h", config=config)
    out = json.loads(shown.stdout)
    assert out["store"].startswith("postgresql:///metrics_")
    cpu = [s for s in out["series"] if s["metric"] == "cpu.percent"]
    assert len(cpu[0]["points"]) == 2
    for proc in (first, second, shown):
        assert pg_password not in proc.stdout + proc.stderr


def test_postgres_unreachable_is_one_clean_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    url = "postgresql://metrics:s3cret@/metrics?host=/nonexistent-dir&port=5999"
    config.write_text(f'state_dir = "{tmp_path}"\ndatabase_url = "{url}"\n')
    proc = reconciler("job", "metrics", config=config, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "s3cret" not in proc.stderr
    assert lines[0].startswith(
        "reconciler job: cannot open metrics database 'postgresql:///metrics'"
    )


def test_postgres_without_psycopg_says_which_extra(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path}"\ndatabase_url = "postgresql://u:p@db/m"\n')
    code = (
        "import sys; sys.modules['psycopg'] = None  # as if the extra were not installed\n"
        "from reconciler.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "job", "metrics", "--config", str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "psycopg is not installed" in proc.stderr
    assert "reconciler[postgres]" in proc.stderr


# --- as a oneshot unit inside the disposable host ----------------------------------------


@pytest.mark.host
def test_job_as_oneshot_unit_leaves_its_journal_entry(host: sandbox.Host, make_unit: Any) -> None:
    unit = make_unit(
        "metrics-sample.service",
        "[Unit]\nDescription=metrics sample (test)\n\n[Service]\nType=oneshot\n"
        f"Environment=PYTHONPATH={SRC_INSIDE}\n"
        f"ExecStart={PYTHON_INSIDE} -m reconciler job metrics "
        "--state-dir /var/lib/reconciler-test\n",
    )
    host.systemctl("daemon-reload")
    for _ in range(2):
        host.systemctl("start", unit)  # a oneshot: returns when the run has finished
    result = host.systemctl("show", "-p", "Result", "-p", "ExecMainStatus", unit).stdout
    assert "Result=success" in result and "ExecMainStatus=0" in result
    shown = host.run(
        ["env", *(f"{k}={v}" for k, v in ENV_INSIDE.items()), PYTHON_INSIDE, "-m", "reconciler"]
        + ["metrics", "--json", "--state-dir", "/var/lib/reconciler-test"]
    )
    cpu = [s for s in json.loads(shown.stdout)["series"] if s["metric"] == "cpu.percent"]
    assert len(cpu[0]["points"]) >= 1  # two runs within one second share a timestamp
    assert (host.root / "var/lib/reconciler-test/metrics.db").stat().st_mode & 0o777 == 0o600
    host.journal_sync()
    entries = host.journal("RECONCILER_EVENT=job.metrics", f"_SYSTEMD_UNIT={unit}")
    assert len(entries) == 2
    last = entries[-1]
    assert last["MESSAGE_ID"] == "089af8ac054444abbb086aedad7958fd"
    assert last["RECONCILER_RATE_SOURCE"] == "previous run"
    assert int(last["RECONCILER_SAMPLES"]) > 5
    assert 0 <= float(last["RECONCILER_CPU_PERCENT"]) <= 100
