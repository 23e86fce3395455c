"""``reconciler promote`` and ``fleet`` as real processes against a real Prometheus and a real
git repository served by ``git daemon`` (``tests/integration/fleetworld.py``): a wave advances
after its soak and waits while soaking, a paging alert halts the canaries' target and its
revert rolls through, an offline host is unknown, a pause holds, and the shipped rules and
dashboard run on that Prometheus. The faults (Prometheus down or answering garbage, a ref
moved by hand, racing and killed promoters) are in tests/faults/test_rollout_faults.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from reconciler.monitor import alert_webhook
from tests.integration.fleetworld import (
    CANARY,
    DASHBOARD,
    EARLY,
    NEEDS_PROMETHEUS,
    REST,
    ROLLOUT_TOML,
    RULES,
    World,
    free_port,
    one_line,
    query,
    running,
    world,
)
from tests.integration.gitrepo import GIT_ENV, git, tcp_server
from tests.integration.test_source import gpg, new_key

pytestmark = NEEDS_PROMETHEUS
__all__ = ["world"]  # the fixture, used by name


def test_advance_after_soak_wait_while_soaking(world: World) -> None:
    a = world.a
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.report({CANARY: a, EARLY: a, REST: a})
    first = world.promote()
    assert first.returncode == 0, first.stderr
    assert world.wave("canary") == b and world.wave("early") == a  # the canaries follow main
    assert "canary: advance" in first.stdout

    world.report({CANARY: b, EARLY: a, REST: a}, since=time.time())
    soaking = world.promote()
    assert soaking.returncode == 0, soaking.stderr
    assert "early: wait: 0 of 2 needed hosts of wave 'canary' soaked" in soaking.stdout
    assert world.wave("early") == a

    world.report({CANARY: b, EARLY: a, REST: a}, since=time.time() - 31)  # soak_sec = 30
    started = time.monotonic()
    soaked = world.promote("--json")
    elapsed = time.monotonic() - started
    assert soaked.returncode == 0, soaked.stderr
    assert json.loads(soaked.stdout)["moved"] == {"early": [a, b]}
    assert world.wave("early") == b and world.wave("rest") == a
    assert elapsed < 10, f"a step took {elapsed:.2f} s"  # 0.4-0.65 s unloaded (bench/)


def test_paging_alert_on_the_canaries_halts_and_a_revert_rolls_through(
    world: World, tmp_path: Path
) -> None:
    a = world.a
    bad = world.repo.commit({"templates/x": "bad"}, "bad")
    world.set_waves(canary=bad)
    received: list[tuple[dict[str, str], bytes]] = []

    def answer(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
        )
        while len(body) < int(headers.get("Content-Length", "0")):
            body += conn.recv(65536)
        received.append((headers, body))
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    secret = tmp_path / "notify.secret"
    secret.write_text("s3cret\n")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal.sock"))
    journal.settimeout(0.2)
    with tcp_server(answer) as port, journal:
        world.write_config(
            world.prom,
            f'webhook = "http://127.0.0.1:{port}/hook"\nwebhook_secret_file = "{secret}"\n',
        )
        world.report({CANARY: bad, EARLY: a, REST: a}, wrong=("c1",))
        halted = world.promote(env={"RECONCILER_JOURNAL_SOCKET": str(tmp_path / "journal.sock")})
        entries = []
        with contextlib.suppress(TimeoutError):
            while True:
                entries.append(journal.recv(1 << 20))
    assert halted.returncode == 1, halted.stdout + halted.stderr
    line = one_line(halted)
    assert line.startswith(f"reconciler promote: rollout halted at {bad[:12]}: paging alert")
    assert "CanaryAnswersWrong" in line
    assert world.wave("early") == a and world.wave("rest") == a  # 0 refs moved beyond canaries
    halt = world.refs()["refs/heads/rollout-control/halt"]
    assert f"Halted-Target: {bad}" in git(world.repo.remote, "log", "-1", "--format=%B", halt)
    assert any(b"RECONCILER_EVENT=rollout.halted" in e for e in entries), entries
    assert len(received) == 1
    headers, body = received[0]
    assert alert_webhook.verify(b"s3cret", body, headers["X-Reconciler-Signature-256"])
    assert json.loads(body)["events"][0]["target"] == bad

    world.write_config(world.prom)
    again = world.promote()  # still firing; the halt holds the bad target, once
    assert again.returncode == 0, again.stderr
    assert f"early: wait: {bad[:12]} is halted" in again.stdout
    assert world.wave("early") == a

    git(world.repo.work, "revert", "--no-edit", "HEAD")
    git(world.repo.work, "push", "-q", "origin", "HEAD:main")
    fix = git(world.repo.work, "rev-parse", "HEAD")
    rolled = world.promote()  # a newer commit is a new rollout: the canaries take it
    assert rolled.returncode == 0, rolled.stderr
    assert world.wave("canary") == fix and world.wave("early") == a

    # c1 runs the revert, c2 has not synced it yet and its alert still fires: that holds the
    # next wave but does not halt the revert (the alert is not on a host running it)
    world.metrics.publish(
        world.prom,
        {"c1": (fix, fix, time.time(), False), "c2": (bad, fix, time.time() - 600, False)},
        wrong=("c2",),
    )
    held = world.promote()
    assert held.returncode == 0, held.stdout + held.stderr
    assert "paging alert CanaryAnswersWrong firing on wave 'canary' from before" in held.stdout
    world.report({CANARY: fix, EARLY: a, REST: a}, since=time.time() - 600)  # cleared, soaked
    through = world.promote()
    assert through.returncode == 0, through.stderr
    assert world.wave("early") == fix


def test_offline_host_is_unknown_and_does_not_freeze_the_fleet(world: World) -> None:
    a = world.a
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.set_waves(canary=b, early=b)
    world.report({CANARY: b, EARLY: b, REST: a}, offline=("e4",))
    status = world.run("fleet", "status", "--json")
    assert status.returncode == 0, status.stderr
    early = next(w for w in json.loads(status.stdout)["waves"] if w["wave"] == "early")
    assert (early["applied"], early["healthy"], early["unknown"]) == (3, 3, 1)
    assert (early["slowest"], early["slowest_why"]) == ("e4", "not reporting")
    moved = world.promote()  # min_reporting 0.75: 3 of 4 soaked is enough
    assert moved.returncode == 0, moved.stderr
    assert world.wave("rest") == b


def test_pause_holds_every_wave_until_resume(world: World) -> None:
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.report({CANARY: world.a, EARLY: world.a, REST: world.a})
    paused = world.run("fleet", "pause", "--reason", "incident 7")
    assert paused.returncode == 0, paused.stderr
    held = world.promote()
    assert held.returncode == 0, held.stderr
    assert "canary: wait: paused: incident 7" in held.stdout
    assert world.wave("canary") == world.a
    status = world.run("fleet", "status")
    assert "PAUSED: incident 7" in status.stdout, status.stdout + status.stderr
    resumed = world.run("fleet", "resume")
    assert resumed.returncode == 0 and "pause lifted" in resumed.stdout, resumed.stderr
    assert world.promote().returncode == 0
    assert world.wave("canary") == b


def test_shipped_rules_and_dashboard_against_prometheus(world: World) -> None:
    """The recording rules compute the per-wave ratios, the alert expressions select the
    right hosts, and every dashboard query parses and runs."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus"
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    a, prom = world.a, world.prom
    b = world.repo.commit({"templates/x": "1"}, "B")
    hosts = {
        "c1": (b, b, time.time() - 60, False),
        "c2": (a, b, time.time() - 60, False),  # stuck on the old revision
        "e1": (a, a, 0.0, True),
    }
    world.metrics.publish(prom, hosts)
    deadline = time.monotonic() + 10
    while True:  # the rules are evaluated every 0.5 s, after the scrape
        done = {m["wave"]: v for m, v in query(prom, "wave:reconciler_rollout_done:ratio")}
        if done == {"canary": 0.5, "early": 1.0}:
            break
        assert time.monotonic() < deadline, done
        time.sleep(0.1)
    failed = {m["wave"]: v for m, v in query(prom, "wave:reconciler_rollout_failed:ratio")}
    assert failed == {"canary": 0.0, "early": 1.0}
    healthy = {m["wave"]: v for m, v in query(prom, "wave:reconciler_rollout_healthy:ratio")}
    assert healthy == {"canary": 1.0, "early": 0.0}
    stuck = query(
        prom,
        "reconciler_rollout_info == 1 unless on (host, revision) label_replace("
        'reconciler_rollout_info, "revision", "$1", "target", "(.*)")',
    )
    assert [m["host"] for m, _ in stuck] == ["c2"]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    for expr in exprs:
        query(prom, expr.replace("$wave", ".*"))  # status success, or the assert says why


@contextlib.contextmanager
def alertmanager(base: Path) -> Iterator[str]:
    """Debian's Alertmanager on 127.0.0.1 (no cluster), alerts posted by the test."""
    binary = shutil.which("prometheus-alertmanager")
    assert binary, "prometheus-alertmanager is not installed (ci/test installs it)"
    base.mkdir()
    (base / "am.yml").write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    port = free_port()
    argv = [
        binary,
        f"--config.file={base / 'am.yml'}",
        f"--storage.path={base / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with running(argv, url, base / "am.log"):
        yield url


def test_alertmanager_alerts_and_their_silences(world: World, tmp_path: Path) -> None:
    """With alertmanager_url the paging alerts come from Alertmanager: a silenced one does
    not hold the rollout, the same alert unsilenced halts it."""
    a = world.a
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.set_waves(canary=b)
    world.report({CANARY: b, EARLY: a, REST: a})
    with alertmanager(tmp_path / "am") as am:
        labels = {"alertname": "CanarySlow", "severity": "page", "wave": "canary"}
        ends = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        posted = requests.post(
            f"{am}/api/v2/alerts", json=[{"labels": labels, "endsAt": ends}], timeout=5
        )
        assert posted.status_code == 200, posted.text
        silence = requests.post(
            f"{am}/api/v2/silences",
            json={
                "matchers": [{"name": "alertname", "value": "CanarySlow", "isRegex": False}],
                "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60)),
                "endsAt": ends,
                "createdBy": "test",
                "comment": "known, harmless",
            },
            timeout=5,
        ).json()["silenceID"]
        world.write_config(world.prom, f'alertmanager_url = "{am}"\n')
        deadline = time.monotonic() + 10
        while requests.get(f"{am}/api/v2/alerts", timeout=5).json()[0]["status"]["state"] != (
            "suppressed"
        ):
            assert time.monotonic() < deadline, "the silence never applied"
            time.sleep(0.1)
        silenced = world.promote()
        assert silenced.returncode == 0, silenced.stderr
        assert world.wave("early") == b  # the silenced alert did not hold it

        world.set_waves(early=a)
        requests.delete(f"{am}/api/v2/silence/{silence}", timeout=5).raise_for_status()
        while requests.get(f"{am}/api/v2/alerts", timeout=5).json()[0]["status"]["state"] != (
            "active"
        ):
            assert time.monotonic() < deadline + 10, "the alert never came back"
            time.sleep(0.1)
        halted = world.promote()
    assert halted.returncode == 1, halted.stdout
    assert "paging alert CanarySlow firing on wave 'canary'" in one_line(halted)
    assert world.wave("early") == a


def test_approve_wave_needs_a_signed_tag(world: World, tmp_path: Path) -> None:
    """``approve = true``: the wave waits until its target carries an annotated tag signed
    by a key of gpg_home (a lightweight tag or a stranger's signature is not enough)."""
    if shutil.which("gpg") is None:
        pytest.fail("gpg is needed for the approval test")
    root = tmp_path / "g"  # short: gpg-agent's socket path must stay short
    root.mkdir()
    signer, other, trusted = root / "s", root / "o", root / "t"
    try:
        signer_fpr = new_key(signer, "Signer <signer@example.com>")
        other_fpr = new_key(other, "Other <other@example.com>")
        trusted.mkdir(mode=0o700)
        gpg(trusted, "--import", data=gpg(signer, "--export", signer_fpr))
        a = world.a
        b = world.repo.commit(
            {
                "inventory/rollout.toml": ROLLOUT_TOML.replace(
                    "min_reporting = 0.75", "min_reporting = 0.75\napprove = true"
                )
            },
            "B: early needs approval",
        )
        world.set_waves(canary=b)
        world.report({CANARY: b, EARLY: a, REST: a})
        world.write_config(world.prom)
        world.config.write_text(f'gpg_home = "{trusted}"\n' + world.config.read_text())

        def tag(name: str, home: Path | None, fpr: str = "") -> None:
            args = ["tag", name, b] if home is None else ["tag", "-s", "-m", name, name, b]
            env = {"GNUPGHOME": str(home)} if home else {}
            subprocess.run(
                ["git", "-c", f"user.signingkey={fpr}", *args],
                cwd=world.repo.work,
                env={**GIT_ENV, **env},
                check=True,
                capture_output=True,
            )
            git(world.repo.work, "push", "-q", "origin", f"refs/tags/{name}")

        tag("v1-light", None)
        tag("v1-stranger", other, other_fpr)
        waiting = world.promote()
        assert waiting.returncode == 0, waiting.stderr
        assert f"early: wait: needs approval: no verified signed tag on {b[:12]}" in waiting.stdout
        assert world.wave("early") == a
        tag("v1", signer, signer_fpr)
        approved = world.promote()
        assert approved.returncode == 0, approved.stderr
        assert world.wave("early") == b
    finally:
        for home in (signer, other, trusted):  # the agents this test started
            if home.exists():
                subprocess.run(
                    ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False
                )


def test_a_promoter_hint_names_the_config_file_it_read(tmp_path: Path) -> None:
    """A first operator's report: with ``--config promote.toml`` the hint said to set
    ``prometheus_url`` in /etc/reconciler/config.toml, a file the promoter never read."""
    from reconciler.config import Settings
    from reconciler.errors import UsageError
    from reconciler.fleet.promoter import Promoter

    read = tmp_path / "promote.toml"
    settings = Settings(state_dir=tmp_path, path=read)
    with pytest.raises(UsageError) as no_repo:
        Promoter(settings)
    assert no_repo.value.hint is not None and str(read) in no_repo.value.hint
    promoter = Promoter(settings, repo=str(tmp_path / "remote.git"))
    with pytest.raises(UsageError) as no_prometheus:
        promoter._prometheus()
    hint = no_prometheus.value.hint
    assert hint is not None and f"set prometheus_url in [promote] of {read}" == hint, hint
