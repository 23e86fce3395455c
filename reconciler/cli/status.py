"""``reconciler status``: managed units desired vs live, the revision, last sync, findings."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from reconciler import runtime
from reconciler.cli import _options

if TYPE_CHECKING:
    from reconciler.model import LiveUnit

SYNC_TIMER = "gitops-sync.timer"
HELP = "per managed unit: desired vs live; current revision, last sync, open findings"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler import monitor
    from reconciler.store import finding_store

    settings = _options.settings(args)
    systemd = runtime.connect(settings)  # first: no systemd, nothing created
    try:
        store = runtime.open_store(settings)
    except BaseException:
        systemd.close()
        raise
    db = finding_store.FindingStore(store.path)
    try:
        view = monitor.view_host(settings, systemd, store)
        counters = db.counters()
        open_findings = sorted(db.open_findings().values(), key=lambda f: (f.finding.unit, f.key))
        history = store.history(1)
        suspended = store.suspended()
        unfinished = unfinished_sync(settings, store)
        bad = store.bad_revisions()
        timer = systemd.read_units([SYNC_TIMER], runtime=False)[SYNC_TIMER]
        data: dict[str, Any] = {
            "host": settings.host_name,
            "revision": store.applied_revision(),
            "last_sync": (
                {
                    "started_at": history[0].started_at,
                    "duration_sec": history[0].duration_sec,
                    "result": history[0].result,
                    "revision": history[0].revision,
                    "trigger": history[0].trigger,
                    "error": history[0].error,
                }
                if history
                else None
            ),
            "unfinished_sync": unfinished,
            "bad_revisions": bad,
            "suspended": suspended.__dict__ if suspended else None,
            "automatic": automatic(timer, suspended is not None),
            "units": [u.__dict__ for u in monitor.unit_reports(view, counters)],
            "drift": [i.to_dict() for items in view.drift.values() for i in items],
            "files": config_files(settings, view.drift),
            "pending_restart": pending_restarts(settings, systemd, store.owned()),
            "findings": [f.to_dict() for f in open_findings],
        }
    finally:
        db.close()
        systemd.close()
        store.close()
    if args.json:
        _options.print_json(data)
    else:
        sys.stdout.write(render_table(data))
    return 0


def unfinished_sync(settings: Any, store: Any) -> dict[str, Any] | None:
    """A sync's note of the revision it applies and gates, still there: that sync runs now
    (it holds the lock) or was killed before its gate passed (the next sync gates it)."""
    from reconciler.host import lock
    from reconciler.store.ledger import UNVERIFIED_KEY

    note = store.kv_json(UNVERIFIED_KEY)
    if not note.get("revision"):
        return None
    return {
        "revision": note["revision"],
        "gated": len(note.get("checks") or ()),
        "running": lock.busy(settings.run_dir / "sync.lock"),
    }


def config_files(settings: Any, drift: dict[str, Any]) -> list[dict[str, Any]]:
    """The managed config files (``[files."PATH"]``, from the file manifest) and their drift.

    ``mode`` and ``owner`` are the live file's (what an operator checks with ``ls -l``; a
    first user read the desired mode there while the file was 0666), ``want_mode`` and
    ``want_owner`` the manifest's; ``drift`` says how they differ. "-": no such file."""
    from reconciler.host.config_files import read_path
    from reconciler.store import file_manifest

    out = []
    for m in file_manifest.load(settings.state_dir).values():
        live = read_path(settings.host_root, m.path).meta
        out.append(
            {
                "path": m.path,
                "mode": f"{live.mode:04o}" if live else "-",
                "owner": f"{live.uid}:{live.gid}" if live else "-",
                "want_mode": f"{m.mode:04o}",
                "want_owner": f"{m.uid}:{m.gid}",
                "adopted": m.original is not None,
                "drift": [i.text() for i in drift.get(m.path, [])],
            }
        )
    return out


def pending_restarts(settings: Any, systemd: Any, owned: frozenset[str]) -> list[dict[str, Any]]:
    """Running units one of our drop-ins changed under since they started (written with
    ``restart = false``, or by a sync whose restart failed): they still run on their old
    settings while ``systemctl show`` already shows the new ones (a README-only user was
    fooled). A drop-in file newer than the unit's ``ActiveEnterTimestamp`` says so."""
    from reconciler.core import unitkind

    written: dict[str, list[tuple[str, float]]] = {}
    for name in sorted(owned):
        target = unitkind.dropin_target(name)
        if target is None or "@." in target:  # a template's instances: not looked at here
            continue
        try:
            mtime = (settings.unit_dir / name).stat().st_mtime
        except OSError:
            continue
        written.setdefault(target, []).append((name.rpartition("/")[2], mtime))
    if not written:
        return []
    live = systemd.read_units(sorted(written), runtime=False)
    running = [
        n for n in sorted(written) if n in live and live[n].active_state in ("active", "reloading")
    ]
    if not running:
        return []
    entered = systemd.get_properties(
        running, "org.freedesktop.systemd1.Unit", ["ActiveEnterTimestamp"]
    )
    out = []
    for unit in running:
        started = int(entered[unit].get("ActiveEnterTimestamp") or 0) / 1e6
        newer = [(f, t) for f, t in written[unit] if t > started]
        if started and newer:
            out.append(
                {
                    "unit": unit,
                    "dropins": [f for f, _ in newer],
                    "changed_at": max(t for _, t in newer),
                    "started_at": started,
                }
            )
    return out


def automatic(timer: LiveUnit, suspended: bool) -> dict[str, Any]:
    """Whether timer syncs happen: the timer installed, enabled and waiting, not suspended
    (after ``uninstall`` there is no timer, whatever the suspension says)."""
    if timer.load_state != "loaded":
        why = f"{SYNC_TIMER} is not installed: run 'reconciler install'"
    elif timer.active_state != "active":
        why = f"{SYNC_TIMER} is {timer.active_state}"
    elif timer.unit_file_state not in ("enabled", "static", "linked", ""):
        why = f"{SYNC_TIMER} is {timer.unit_file_state}: it will not start at boot"
    else:
        why = ""
    return {"on": not why and not suspended, "timer": timer.active_state, "why": why}


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def render_table(data: dict[str, Any]) -> str:
    """The terminal view: a header, one row per unit, then the open findings."""
    lines = [f"host {data['host']}  revision {(data['revision'] or 'none')[:12]}"]
    last = data["last_sync"]
    if last:
        lines.append(
            f"last sync {_when(last['started_at'])}: {last['result']} in "
            f"{last['duration_sec']:.1f}s ({last['trigger']})"
            + (f": {last['error']}" if last["error"] else "")
        )
    else:
        lines.append("last sync: never")
    unfinished = data.get("unfinished_sync")
    if unfinished and unfinished["running"]:
        lines.append(f"sync of {unfinished['revision'][:12]}: under way")
    elif unfinished:
        gate = unfinished.get("gated")
        lines.append(
            f"sync of {unfinished['revision'][:12]}: interrupted (killed before it was "
            "recorded); the next sync takes it over"
            + (f" and runs its health gate ({gate} units; a rollback if unhealthy)" if gate else "")
        )
    for b in data.get("bad_revisions") or []:
        lines.append(f"marked bad: {b['revision'][:12]} at {_when(b['marked_at'])}: {b['reason']}")
    sus = data["suspended"]
    auto = data.get("automatic") or {"on": True, "why": ""}
    lines.append(
        f"automatic syncs: SUSPENDED since {_when(sus['since'])} by {sus['by']}: {sus['reason']}"
        if sus
        else "automatic syncs: on"
        if auto["on"]
        else f"automatic syncs: off ({auto['why']})"
    )
    rows = [("UNIT", "FILE", "ENABLED", "ACTIVE", "RESTARTS", "CRASHES", "DRIFT")]
    for u in data["units"]:
        want = "enabled" if u["enable"] else "disabled"
        have = u["unit_file_state"] or "-"
        rows.append(
            (
                u["unit"],
                u["file"],
                have if have == want or have == "static" else f"{have} (want {want})",
                f"{u['active_state']}/{u['sub_state']}",
                str(u["n_restarts"]),
                str(u["counters"].get("crashes", 0)),
                "yes" if u["drift"] else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("")
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if len(rows) == 1:
        lines.append("(no managed units: no sync applied yet)")
    files = data.get("files") or []
    if files:
        lines.append("")
        cells = [("CONFIG FILE", "MODE", "OWNER", "DRIFT")]
        cells += [(f["path"], f["mode"], f["owner"], "; ".join(f["drift"])) for f in files]
        wide = [max(len(c[i]) for c in cells) for i in range(4)]
        for cell in cells:
            lines.append("  ".join(c.ljust(w) for c, w in zip(cell, wide, strict=True)).rstrip())
    for p in data.get("pending_restart") or []:
        lines.append(
            f"restart pending: {p['unit']} runs on its old settings: its drop-in "
            f"{', '.join(p['dropins'])} changed at {_when(p['changed_at'])}, after it started "
            f"({_when(p['started_at'])}); run 'systemctl restart {p['unit']}'"
        )
    lines.append("")
    if not data["findings"]:
        lines.append("open findings: none")
    else:
        lines.append(f"open findings: {len(data['findings'])}")
        for f in data["findings"]:
            lines.append(f"  {f['severity']:<8} {f['kind']:<18} {f['summary']}")
            lines.append(f"  {'':<8} {'':<18} since {_when(f['first_seen'])}")
            if f["impact"]:
                lines.append(
                    f"  {'':<8} {'':<18} impact: {', '.join(i['unit'] for i in f['impact'])}"
                )
    return "\n".join(lines) + "\n"
