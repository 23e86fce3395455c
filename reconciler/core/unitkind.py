"""Unit kinds: how systemd names them and which unit starts which (pure).

A mount, automount or swap unit is named after a path (``/srv/my-data`` ->
``srv-my\\x2ddata.mount``, as ``systemd-escape --path`` prints it); systemd refuses to load
one whose ``Where=``/``What=`` says otherwise, so the render refuses it first, naming the
right name. A socket, path or timer starts a service of its own (``NAME.service`` unless
``Service=``/``Unit=`` says otherwise): the sync leaves starting that service to it.

A Quadlet kind (``container``, ``volume``, ...) is no systemd unit: its file goes into
``QUADLET_DIR`` and Podman's generator makes a service of it at every Reload, named as
``quadlet`` names it (``generated_unit``); that service is what the sync starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

KINDS = ("service", "socket", "path", "mount", "automount", "swap", "target", "slice", "timer")
PATH_NAMED = {"mount": "Where", "automount": "Where", "swap": "What"}  # kind -> directive
# kind -> (section, directive naming the unit it starts)
ACTIVATES = {"socket": ("Socket", "Service"), "path": ("Path", "Unit"), "timer": ("Timer", "Unit")}
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


DROPIN_PREFIX = "50-reconciler-"

QUADLET_KINDS = ("container", "volume", "network", "pod", "kube", "image")
QUADLET_DIR = "/etc/containers/systemd"  # the host's; Podman's generator reads it
QUADLET_GENERATOR = "/usr/lib/systemd/system-generators/podman-system-generator"
# kind -> the generated service's suffix after NAME (podman-systemd.unit(5))
_GENERATED = {"container": "", "kube": "", "volume": "-volume", "network": "-network",
              "pod": "-pod", "image": "-image"}  # fmt: skip


def generated_unit(stem: str, kind: str, content: str) -> str:
    """The service Quadlet generates from ``STEM.KIND``: ``ServiceName=`` in the kind's
    section, else ``STEM.service`` (container, kube) or ``STEM-KIND.service``."""
    named = section_values(content, kind.capitalize(), "ServiceName")
    if named and named[-1]:
        return named[-1] if named[-1].endswith(".service") else f"{named[-1]}.service"
    return f"{stem}{_GENERATED[kind]}.service"


def is_quadlet_path(path: str) -> bool:
    """A host path of a Quadlet file (``/etc/containers/systemd/NAME.KIND``)."""
    directory, _, name = path.rpartition("/")
    return directory == QUADLET_DIR and name.rpartition(".")[2] in QUADLET_KINDS


def dropin_target(name: str) -> str | None:
    """The unit a drop-in file ``UNIT.d/50-reconciler-NAME.conf`` adjusts; None: not one."""
    unit, sep, file = name.partition(".d/")
    return unit if sep and file.startswith(DROPIN_PREFIX) and file.endswith(".conf") else None


def instances(template: str, names: Iterable[str]) -> list[str]:
    """The instances (``foo@1.service``) of ``template`` (``foo@.service``) among ``names``;
    [] when ``template`` is no template."""
    stem, dot, kind = template.rpartition(".")
    if not stem.endswith("@"):
        return []
    return sorted(
        n for n in names if n.startswith(stem) and n.endswith(dot + kind) and n != template
    )


def dropin_dirs(unit: str) -> list[str]:
    """The ``.d`` directory names systemd reads drop-ins of ``unit`` from, most specific
    first: ``foo-bar@1.service.d``, ``foo-bar@.service.d``, ``foo-bar-.service.d``,
    ``foo-.service.d``, ``service.d``."""
    stem, _, kind = unit.rpartition(".")
    names = [unit]
    if "@" in stem and not stem.endswith("@"):
        names.append(stem.partition("@")[0] + "@." + kind)
    base = stem.partition("@")[0]
    parts = base.split("-")
    names += ["-".join(parts[:i]) + "-." + kind for i in range(len(parts) - 1, 0, -1)]
    return [f"{n}.d" for n in names] + [f"{kind}.d"]


def merge_dropins(found: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop-ins as systemd applies them: ``found`` (path, text) in priority order (search
    path, then ``dropin_dirs``); one per file name, the first found winning; sorted by name."""
    by_name: dict[str, tuple[str, str]] = {}
    for path, text in found:
        by_name.setdefault(path.rpartition("/")[2], (path, text))
    return [by_name[n] for n in sorted(by_name)]


def cat(fragment: tuple[str, str] | None, dropins: Iterable[tuple[str, str]]) -> str:
    """``systemctl cat``: each file of the unit under a ``# PATH`` line, the unit file first."""
    parts = [f"# {path}\n{text}" for path, text in ([fragment] if fragment else [])]
    parts += [f"# {path}\n{text}" for path, text in dropins]
    if fragment is None:
        parts.insert(0, "# (no unit file: the drop-ins adjust nothing yet)\n")
    return "\n".join(p if p.endswith("\n") else p + "\n" for p in parts)


def is_unit(name: str) -> bool:
    """A unit name systemd knows (not one of our drop-in files)."""
    return "/" not in name


def escape_path(path: str) -> str:
    """``systemd-escape --path``: ``/srv/my-data`` -> ``srv-my\\x2ddata`` (``/`` -> ``-``)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return "-"
    out = []
    for i, char in enumerate("/".join(parts)):
        if char == "/":
            out.append("-")
        elif char in _PLAIN and not (i == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"\\x{b:02x}" for b in char.encode("utf-8"))
    return "".join(out)


def unescape_path(name: str) -> str | None:
    """The path a path-named unit stem stands for (None: not a valid escaped path)."""
    if name == "-":
        return "/"
    data = bytearray(b"/")
    i = 0
    while i < len(name):
        char = name[i]
        if char == "-":
            data += b"/"
        elif char == "\\":
            hexa = name[i + 2 : i + 4]
            if name[i + 1 : i + 2] != "x" or len(hexa) != 2:
                return None
            try:
                data.append(int(hexa, 16))
            except ValueError:
                return None
            i += 3
        else:
            data += char.encode("utf-8")
        i += 1
    try:
        path = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return path if escape_path(path) == name and ".." not in path.split("/") else None


def name_problem(stem: str, kind: str) -> str | None:
    """Why ``stem`` cannot name a unit of ``kind`` (beyond the common name rules), or None."""
    if kind in PATH_NAMED:
        if unescape_path(stem) is None:
            return (
                f"a {kind} unit is named after its escaped {PATH_NAMED[kind]}= path "
                "('systemd-escape --path /srv/data' prints 'srv-data')"
            )
    elif "\\" in stem:
        return "'\\' escapes are for path-named units (mount, automount, swap)"
    if (
        kind == "slice"
        and stem != "-"
        and ("--" in stem or stem.startswith("-") or stem[-1] == "-")
    ):
        return "a slice's name is its parent slices joined by '-' (no empty part)"
    return None


def section_values(content: str, section: str, key: str) -> list[str]:
    """Every value of ``key=`` in ``[section]`` of a unit file, in order."""
    values: list[str] = []
    inside = False
    for raw in content.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == f"[{section}]"
        elif inside and line and not line.startswith(("#", ";")):
            name, sep, value = line.partition("=")
            if sep and name.strip() == key:
                values.append(value.strip())
    return values


def path_name_problem(stem: str, kind: str, content: str) -> str | None:
    """A mount/automount/swap unit whose ``Where=``/``What=`` is not its name, or None."""
    directive = PATH_NAMED.get(kind)
    if directive is None:
        return None
    values = section_values(content, kind.capitalize(), directive)
    if not values:
        return None  # systemd takes the path from the name
    right = escape_path(values[-1])
    if right == stem:
        return None
    return (
        f"{directive}={values[-1]} needs the unit name '{right}.{kind}', not '{stem}.{kind}' "
        f"(a {kind} unit is named after its escaped {directive}= path)"
    )


def activated(units: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{unit: activator}``: the unit each socket, path or timer of ``(name, content)`` starts.

    A socket with ``Accept=yes`` starts instances of ``NAME@.service``, which no sync starts.
    """
    out: dict[str, str] = {}
    for name, content in units:
        stem, _, kind = name.rpartition(".")
        if kind not in ACTIVATES:
            continue
        section, key = ACTIVATES[kind]
        named = section_values(content, section, key)
        if named:
            out.setdefault(named[-1], name)
        elif kind == "socket" and section_values(content, "Socket", "Accept")[-1:] in (
            ["yes"],
            ["true"],
            ["1"],
            ["on"],
        ):
            out.setdefault(f"{stem}@.service", name)
        else:
            out.setdefault(f"{stem}.service", name)
    return out


def scheduled(activators: Mapping[str, str]) -> set[str]:
    """The units a timer or path unit starts (the sync never starts or restarts them)."""
    return {unit for unit, by in activators.items() if not by.endswith(".socket")}
