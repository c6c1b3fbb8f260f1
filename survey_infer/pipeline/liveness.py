"""Is a lock holder alive? Judged only on proof on this host (same boot and PID namespace, the process gone or
its PID reused); holders elsewhere are judged by their heartbeat (see :mod:`survey_infer.pipeline.lock`)."""
from __future__ import annotations

import os
import socket
from pathlib import Path


def boot_id() -> str:
    """This machine's boot id ("" when it cannot be read)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_ns() -> str:
    """This process's PID namespace ("" when it cannot be read)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def proc_start(pid: int) -> float | None:
    """Start time (Unix s) of process ``pid``; None when it cannot be seen (psutil missing, access denied)."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - psutil missing, no such process, access denied
        return None


def process_liveness(pid: int, start: float | None) -> str:
    """``"dead"``, ``"alive"`` or ``"unknown"`` for process ``pid`` that started at ``start`` (Unix s), on this
    host and in this PID namespace.

    ``dead`` is returned only on proof: ``kill(pid, 0)`` says no such process, or the PID now belongs to a
    process that started at another time (reused). A process that exists but whose start time cannot be read
    (psutil missing, hidden ``/proc``) is ``unknown``.
    """
    if pid <= 0:
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass  # exists, another user's
    except OSError:
        return "unknown"
    now_start = proc_start(pid)
    if now_start is None or not start:
        return "unknown"
    return "alive" if abs(now_start - float(start)) <= 1.0 else "dead"


def holder_liveness(rec: dict) -> str:
    """Liveness of a lock record's holder: ``dead`` / ``alive`` / ``unknown`` on this host, ``elsewhere`` for a
    holder on another host, boot or PID namespace (judged by its heartbeat)."""
    ident = rec.get("identity") or {}
    if not ident or not ident.get("boot_id") or ident.get("host") != socket.gethostname() \
            or ident.get("boot_id") != boot_id() or ident.get("pid_ns") != pid_ns():
        return "elsewhere"
    try:
        pid = int(ident.get("pid", -1))
    except (TypeError, ValueError):
        return "unknown"
    return process_liveness(pid, ident.get("start"))


def holder_is_dead(rec: dict) -> bool:
    """True only when the lock's holder provably no longer exists (see :func:`process_liveness`)."""
    return holder_liveness(rec) == "dead"
