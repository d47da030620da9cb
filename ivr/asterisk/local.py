"""A local Asterisk for development and end-to-end tests: Debian sid's Asterisk in a chroot.

Debian 12 ships no Asterisk; sid does. ``install`` debootstraps a minimal sid with the ``asterisk``
package into ``$IVR_ASTERISK_ROOT`` (default ``var/asterisk/root``; ~50 s, ~500 MB, one retry), never
touching the host's packages. ``up`` renders ``asterisk_conf/`` into the chroot's ``/etc/ivr-asterisk``
(the package's ``/etc/asterisk`` is left alone), bind-mounts the sound folder and the recording spool
at the same absolute paths inside the chroot (Asterisk and the robot exchange file names), starts
``asterisk -f`` in the background as the chroot's ``asterisk`` user, records its PID and waits until
it is fully booted. ``down`` asks it to stop, kills it by PID if it does not, and unmounts.

The chroot shares the host's network: AMI (loopback only), FastAGI and SIP meet on 127.0.0.1.
Everything here needs root (chroot, mount).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from ivr.config import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

CONF_SOURCE = PROJECT_ROOT / "asterisk_conf"
ETC_IN_CHROOT = "/etc/ivr-asterisk"  # the rendered configuration, as Asterisk sees it
ASTERISK_BIN = "/usr/sbin/asterisk"
# What a production Asterisk needs from asterisk_conf/ (it keeps its distribution's asterisk.conf).
PRODUCTION_FILES = (
    "extensions.conf",
    "manager.conf",
    "pjsip.conf",
    "modules.conf",
    "logger.conf",
    "queues.conf",
    "voicemail.conf",
    "rtp.conf",
    "cdr.conf",
    "cdr_custom.conf",
)
# The local instance adds its own asterisk.conf (directories), the test caller/agent contexts and the
# SIPp account.
LOCAL_FILES = (*PRODUCTION_FILES, "asterisk.conf", "extensions_local.conf", "pjsip_local.conf")
# Inside the chroot: Asterisk's log (logger.conf) and the call records (cdr_custom.conf).
MESSAGES_LOG = "/var/log/asterisk/messages.log"
CDR_CSV = "/var/log/asterisk/cdr-custom/ivr-calls.csv"
# Settings the local instance takes from the package's own /etc/asterisk (defaults; quiets start-up).
FROM_PACKAGE = (
    "indications.conf", "features.conf", "ccss.conf", "acl.conf", "udptl.conf", "pjproject.conf",
    "stasis.conf", "cel.conf", "pjsip_notify.conf",
)
DEBOOTSTRAP_TIMEOUT_S = 1200.0
_PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")
_MOUNT_ESCAPE = re.compile(r"\\([0-7]{3})")


class AsteriskError(RuntimeError):
    """The local Asterisk could not be installed, configured, started or stopped."""


class AsteriskUnavailable(AsteriskError):
    """The Debian sid chroot with Asterisk could not be downloaded (an infrastructure failure)."""


class AsteriskNeedsRoot(AsteriskError):
    """Not running as root: the local Asterisk (debootstrap, chroot, mount) cannot be installed or run."""


# ---------------------------------------------------------------- configuration rendering
def agi_url(settings: Settings, environ: Mapping[str, str]) -> str:
    """Where Asterisk finds the robot: ``$IVR_AGI_URL`` (e.g. ``hagi://...``) or the settings' host/port."""
    explicit = environ.get("IVR_AGI_URL", "").strip()
    if explicit:
        if not explicit.startswith(("agi://", "hagi://")):
            raise ValueError(f"IVR_AGI_URL must start with agi:// or hagi://, got {explicit!r}")
        return explicit
    host = settings.agi_host
    if host in ("", "0.0.0.0"):  # the server listens everywhere; Asterisk reaches it on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"agi://{host}:{settings.agi_port}/ivr"


def _checked(name: str, value: str) -> str:
    """A value going into an Asterisk .conf line: one line, no comment character."""
    if any(c in value for c in "\r\n;"):
        raise ValueError(f"{name} must be one line without ';' (it goes into an Asterisk .conf file)")
    return value


def config_values(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    local: bool,
    ami_secret: str,
    sip_secret: str,
    sipp_secret: str = "",
    mod_dir: str = "/usr/lib/x86_64-linux-gnu/asterisk/modules",
) -> dict[str, str]:
    """The ``@@NAME@@`` values for asterisk_conf/, from the settings and ``IVR_*`` variables."""
    fallback = settings.sounds_dir.resolve() / "fallback"  # `ivr prompts build` publishes <locale>/apology.wav
    apology = environ.get("IVR_APOLOGY_SOUND") or str(fallback / settings.locale / "apology")
    if local:
        # interface, penalty, name, state interface, ringinuse: the test agent answers calls in parallel
        members = "member => Local/s@ivr-test-agent/n,0,Test agent,,yes"
        hours = "*,*,*,*"  # the local queue is always open: test calls reach the test agent
    else:
        channels = [c.strip() for c in environ.get("IVR_QUEUE_MEMBERS", "").split(",") if c.strip()]
        members = "\n".join(f"member => {_checked('IVR_QUEUE_MEMBERS', c)}" for c in channels) or (
            "; no static members (IVR_QUEUE_MEMBERS was empty): agents join with AddQueueMember / QueueAdd"
        )
        hours = environ.get("IVR_OPEN_HOURS", "08:00-20:00,*,*,*")
    values = {
        "ETC_DIR": ETC_IN_CHROOT,
        "MOD_DIR": mod_dir,
        "AGI_URL": agi_url(settings, environ),
        "APOLOGY_SOUND": apology,
        "FALLBACK_SOUNDS": str(fallback),
        "OPEN_HOURS": hours,
        "AMI_PORT": str(settings.ami_port),
        "AMI_USER": settings.ami_user,
        "AMI_SECRET": ami_secret,
        "AMI_WRITE_LOCAL": ",system" if local else "",  # PJSIPNotify, for the SIPp tests' callers
        "SIP_PORT": environ.get("IVR_SIP_PORT", "5060"),
        "SIP_SECRET": sip_secret,
        "SIPP_SECRET": sipp_secret or new_secret(),  # the local SIPp account (pjsip_local.conf)
        "SOFTPHONE_CALLERID": environ.get("IVR_SOFTPHONE_CALLERID", "13800000001"),
        "RTP_START": environ.get("IVR_RTP_START", "10000"),
        "RTP_END": environ.get("IVR_RTP_END", "20000"),
        # the local instance's folders inside the chroot (asterisk.conf); a named instance has its own
        "DB_DIR": "/var/lib/asterisk",
        "SPOOL_DIR": "/var/spool/asterisk",
        "RUN_DIR": "/run/asterisk",
        "LOG_DIR": "/var/log/asterisk",
    }
    for name, value in values.items():
        _checked(name, value)
    for name, var in (("SIP_PORT", "IVR_SIP_PORT"), ("RTP_START", "IVR_RTP_START"), ("RTP_END", "IVR_RTP_END")):
        if not values[name].isdigit():
            raise ValueError(f"{var} must be a port number, got {values[name]!r}")
    if int(values["RTP_START"]) >= int(values["RTP_END"]):
        raise ValueError("IVR_RTP_START must be below IVR_RTP_END")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", settings.ami_user):
        raise ValueError(f"ami_user must be letters, digits, '_', '.', '-', got {settings.ami_user!r}")
    values["QUEUE_MEMBERS"] = members
    return values


def render_file(source: Path, values: Mapping[str, str]) -> str:
    text = source.read_text(encoding="utf-8")

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"{source}: no value for the placeholder @@{name}@@")
        return values[name]

    return _PLACEHOLDER.sub(fill, text)


def render_config(out_dir: Path, values: Mapping[str, str], *, local: bool, source: Path = CONF_SOURCE) -> list[Path]:
    """Write asterisk_conf/ with its placeholders filled into ``out_dir`` (mode 0640: secrets inside)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in LOCAL_FILES if local else PRODUCTION_FILES:
        target = out_dir / name
        text = render_file(source / name, values)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(target, 0o640)
        written.append(target)
    return written


def new_secret() -> str:
    return secrets.token_hex(16)


# ---------------------------------------------------------------- mounts and processes
def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == base or point.startswith(base.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _process_alive(pid: int) -> bool:
    """True for a running process (a zombie, which has exited, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    return state not in ("Z", "X")


def _is_asterisk(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"asterisk") for part in cmdline[:1])


@dataclasses.dataclass(frozen=True)
class AsteriskStatus:
    installed: bool
    running: bool
    pid: int | None
    root: Path
    etc_dir: Path
    ami: tuple[str, int]
    sip_port: int
    agi_url: str
    version: str = ""

    def lines(self) -> list[str]:
        out = [
            f"chroot:    {self.root} ({'installed' if self.installed else 'not installed'})",
            f"asterisk:  {'running, PID ' + str(self.pid) if self.running else 'stopped'}"
            + (f" ({self.version})" if self.version else ""),
            f"config:    {self.etc_dir}",
            f"AMI:       {self.ami[0]}:{self.ami[1]} (secret: {self.etc_dir / 'ami_secret'} unless IVR_AMI_SECRET)",
            f"SIP:       softphone user 'softphone' at 127.0.0.1:{self.sip_port} UDP"
            f" (password: {self.etc_dir / 'sip_secret'} unless IVR_SIP_SECRET)",
            f"SIPp:      user 'sipp' (password: {self.etc_dir / 'sipp_secret'} unless IVR_SIPP_SECRET)",
            f"logs:      {self.root / MESSAGES_LOG.lstrip('/')}",
            f"CDR:       {self.root / CDR_CSV.lstrip('/')}",
            f"FastAGI:   {self.agi_url}",
        ]
        return out


@dataclasses.dataclass(frozen=True)
class AmiCredentials:
    host: str
    port: int
    user: str
    secret: str


class LocalAsterisk:
    """The local Asterisk instance: one chroot, one process, identified by the PID file.

    ``instance`` (a short name, e.g. ``pod-b``) makes a second, independent Asterisk from the same chroot's
    binaries: its own configuration (``/etc/ivr-asterisk-<name>``), database, spool, run (control socket)
    and log folders (``/var/log/asterisk-<name>``), PID file and console log (``<state>/instances/<name>``).
    Its ports come from its settings and environment as usual (``ami_port``, ``IVR_SIP_PORT``,
    ``IVR_RTP_START``/``IVR_RTP_END``, ``IVR_AGI_URL``): choose ones the other instances do not use."""

    def __init__(
        self,
        settings: Settings,
        *,
        root: Path | None = None,
        state_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        instance: str = "",
    ) -> None:
        if instance and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", instance):
            raise ValueError(f"an Asterisk instance name is lower-case letters, digits and '-', got {instance!r}")
        self.settings = settings
        self.instance = instance
        self.environ = dict(os.environ if environ is None else environ)
        default_state = PROJECT_ROOT / "var" / "asterisk"
        base_state = Path(self.environ.get("IVR_ASTERISK_STATE", default_state))
        if instance:
            base_state = base_state / "instances" / instance
        self.state_dir = (state_dir or base_state).resolve()
        self.root = (root or Path(self.environ.get("IVR_ASTERISK_ROOT", default_state / "root"))).resolve()
        self.pid_file = self.state_dir / "asterisk.pid"
        self.console_log = self.state_dir / "asterisk.console.log"
        self.install_log = self.state_dir / "debootstrap.log"
        suffix = f"-{instance}" if instance else ""
        self.etc_in_chroot = ETC_IN_CHROOT + suffix
        self.etc_dir = self.root / self.etc_in_chroot.lstrip("/")
        # inside the chroot: (database, spool, run, log) folders of this instance
        self.dirs_in_chroot = {
            "DB_DIR": "/var/lib/asterisk" + suffix,
            "SPOOL_DIR": "/var/spool/asterisk" + suffix,
            "RUN_DIR": "/run/asterisk" + suffix,
            "LOG_DIR": "/var/log/asterisk" + suffix,
        }
        self._process: subprocess.Popen[bytes] | None = None

    def host_path(self, path_in_default_instance: str) -> Path:
        """A log file of this instance on the host, e.g. ``host_path(MESSAGES_LOG)``."""
        path = path_in_default_instance
        if path.startswith("/var/log/asterisk/"):
            path = self.dirs_in_chroot["LOG_DIR"] + path.removeprefix("/var/log/asterisk")
        return self.root / path.lstrip("/")

    # ------------------------------------------------------------ install
    def installed(self) -> bool:
        """The chroot exists and dpkg says the asterisk package is installed in it."""
        status = self.root / "var/lib/dpkg/status"
        if not (self.root / ASTERISK_BIN.lstrip("/")).exists() or not status.exists():
            return False
        text = status.read_text(encoding="utf-8", errors="replace")
        return re.search(r"^Package: asterisk\nStatus: install ok installed$", text, re.MULTILINE) is not None

    def install(self) -> float:
        """debootstrap sid with asterisk (one retry); returns the seconds it took (0 when present)."""
        if self.installed():
            return 0.0
        _need_root("installing the local Asterisk (debootstrap)")
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise AsteriskError("debootstrap is not installed on this machine: apt-get install debootstrap")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        problems = []
        for attempt in (1, 2):
            self._remove_partial_root()
            self.root.parent.mkdir(parents=True, exist_ok=True)
            log.info("downloading Debian sid with asterisk into %s (attempt %d of 2)", self.root, attempt)
            command = [debootstrap, "--variant=minbase", "--include=asterisk", "sid", str(self.root)]
            try:
                with open(self.install_log, "ab") as out:
                    out.write(f"\n=== attempt {attempt}: {' '.join(command)}\n".encode())
                    out.flush()
                    result = subprocess.run(
                        command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        timeout=DEBOOTSTRAP_TIMEOUT_S, check=False,
                    )
                ok = result.returncode == 0 and self.installed()
                problem = f"debootstrap exited with {result.returncode}"
            except subprocess.TimeoutExpired:
                ok, problem = False, f"debootstrap did not finish within {DEBOOTSTRAP_TIMEOUT_S:.0f} s"
            if ok:
                took = time.monotonic() - started
                log.info("local Asterisk installed in %.0f s", took)
                return took
            problems.append(f"attempt {attempt}: {problem}")
            log.warning("installing the local Asterisk failed (%s); see %s", problem, self.install_log)
        self._unmount_all()
        raise AsteriskUnavailable(
            "INFRASTRUCTURE: could not download Debian sid with the asterisk package after 2 attempts "
            f"({'; '.join(problems)}). Last lines of {self.install_log}:\n{_tail(self.install_log)}"
        )

    def _remove_partial_root(self) -> None:
        if not self.root.exists():
            return
        looks_like_target = any((self.root / p).exists() for p in ("debootstrap", "var/lib/dpkg", "usr"))
        if len(self.root.parts) < 4 or not looks_like_target:
            raise AsteriskError(f"refusing to delete {self.root}: it does not look like a debootstrap folder")
        self._unmount_all()
        log.info("removing the incomplete chroot %s", self.root)
        shutil.rmtree(self.root)

    # ------------------------------------------------------------ configuration
    def chroot_ids(self) -> tuple[int, int]:
        """The numeric uid and gid of the chroot's ``asterisk`` user (they differ from the host's)."""
        for line in (self.root / "etc/passwd").read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == "asterisk":
                return int(fields[2]), int(fields[3])
        raise AsteriskError(f"{self.root}/etc/passwd has no asterisk user: is the chroot complete?")

    def _mod_dir(self) -> str:
        found = sorted(self.root.glob("usr/lib/*/asterisk/modules"))
        if not found:
            raise AsteriskError(f"no Asterisk modules folder under {self.root}/usr/lib")
        return "/" + str(found[0].relative_to(self.root))

    def _secret(self, name: str, env_var: str, configured: str) -> str:
        value = configured or self.environ.get(env_var, "")
        if value:
            return value
        return new_secret()

    def render(self) -> Path:
        """Render asterisk_conf/ into the chroot's /etc/ivr-asterisk; returns that folder."""
        ami_secret = self._secret("ami", "IVR_AMI_SECRET", self.settings.ami_secret)
        sip_secret = self._secret("sip", "IVR_SIP_SECRET", "")
        sipp_secret = self._secret("sipp", "IVR_SIPP_SECRET", "")
        values = config_values(
            self.settings, self.environ, local=True, ami_secret=ami_secret, sip_secret=sip_secret,
            sipp_secret=sipp_secret,
            mod_dir=self._mod_dir(),
        )
        values["ETC_DIR"] = self.etc_in_chroot
        values.update(self.dirs_in_chroot)
        uid, gid = self.chroot_ids()
        if self.instance:  # the package made the default instance's folders; a named one makes its own
            for inside in (*self.dirs_in_chroot.values(), self.dirs_in_chroot["LOG_DIR"] + "/cdr-custom"):
                folder = self.root / inside.lstrip("/")
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, uid, gid)
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.etc_dir, 0, gid)
        os.chmod(self.etc_dir, 0o750)
        for path in render_config(self.etc_dir, values, local=True):
            os.chown(path, 0, gid)
        for name in FROM_PACKAGE:
            packaged = self.root / "etc/asterisk" / name
            if packaged.exists():
                shutil.copyfile(packaged, self.etc_dir / name)
                os.chown(self.etc_dir / name, 0, gid)
                os.chmod(self.etc_dir / name, 0o640)
        for name, value in (("ami_secret", ami_secret), ("sip_secret", sip_secret), ("sipp_secret", sipp_secret)):
            target = self.etc_dir / name
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(value + "\n")
        return self.etc_dir

    def ami_credentials(self) -> AmiCredentials:
        """AMI address and login: the secret from the settings, else the one ``up`` generated."""
        secret = self.settings.ami_secret
        if not secret:
            try:
                secret = (self.etc_dir / "ami_secret").read_text(encoding="ascii").strip()
            except FileNotFoundError:
                raise AsteriskError(
                    f"no AMI secret: IVR_AMI_SECRET is unset and {self.etc_dir / 'ami_secret'} does not exist "
                    "(run `ivr asterisk up` first)"
                ) from None
        return AmiCredentials(self.settings.ami_host, self.settings.ami_port, self.settings.ami_user, secret)

    # ------------------------------------------------------------ shared folders
    def shared_dirs(self) -> list[Path]:
        return [self.settings.sounds_dir.resolve(), self.settings.spool_dir.resolve()]

    def _mount_shared(self) -> None:
        uid, gid = self.chroot_ids()
        mounted = {str(p) for p in mounts_under(self.root)}
        for host_dir in self.shared_dirs():
            host_dir.mkdir(parents=True, exist_ok=True)
            # Asterisk's user reads the prompts and writes the recordings (its uid is the chroot's); the
            # recordings' folder is owner-only (the robot, root here, reads and deletes them).
            os.chown(host_dir, uid, gid)
            os.chmod(host_dir, 0o700 if host_dir == self.settings.spool_dir.resolve() else 0o775)
            inside = self.root / str(host_dir).lstrip("/")
            if str(inside) in mounted:
                continue
            inside.mkdir(parents=True, exist_ok=True)
            _run(["mount", "--bind", str(host_dir), str(inside)], f"bind-mounting {host_dir} into the chroot")

    def _unmount_all(self) -> None:
        points = mounts_under(self.root)
        for point in points:
            if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
                _run(["umount", "-l", str(point)], f"unmounting {point}")
        left = mounts_under(self.root)
        if left:
            raise AsteriskError(f"could not unmount {', '.join(map(str, left))}")
        for point in points:  # the empty mount points of the shared folders (rmdir: never removes content)
            folder = point
            while self.root in folder.parents and folder.parent != self.root:  # keeps the chroot's /tmp, /work...
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent

    # ------------------------------------------------------------ process
    def pid(self) -> int | None:
        """The running Asterisk's PID from the PID file, or None (a stale file is removed)."""
        try:
            pid = int(self.pid_file.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            return None
        if _process_alive(pid) and _is_asterisk(pid):
            return pid
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        return None

    def cli(self, command: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run one CLI command through the remote console (``asterisk -rx``)."""
        return subprocess.run(
            ["chroot", str(self.root), ASTERISK_BIN, "-C", f"{self.etc_in_chroot}/asterisk.conf", "-rx", command],
            capture_output=True, text=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL,
        )

    def up(self, timeout_s: float = 30.0) -> AsteriskStatus:
        """Install if needed, render the configuration, mount, start and wait until fully booted."""
        _need_root("starting the local Asterisk (chroot, mount)")
        self.install()
        if self.pid() is not None:
            log.info("the local Asterisk is already running (PID %s)", self.pid())
            return self.status()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.render()
        self._mount_shared()
        uid, gid = self.chroot_ids()
        run_dir = self.root / self.dirs_in_chroot["RUN_DIR"].lstrip("/")
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chown(run_dir, uid, gid)
        command = [
            "chroot", str(self.root), ASTERISK_BIN, "-f", "-U", "asterisk", "-G", "asterisk",
            "-C", f"{self.etc_in_chroot}/asterisk.conf",
        ]
        with open(self.console_log, "ab") as out:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        pid = self._process.pid  # chroot execs asterisk: the same process
        self.pid_file.write_text(f"{pid}\n", encoding="ascii")
        started = time.monotonic()
        try:
            self._wait_booted(pid, timeout_s)
        except BaseException:
            self._stop_pid(pid, grace_s=5.0)
            self._unmount_all()
            raise
        log.info("local Asterisk up (PID %d) in %.2f s", pid, time.monotonic() - started)
        return self.status()

    def _wait_booted(self, pid: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if not _process_alive(pid):
                raise AsteriskError(
                    f"Asterisk (PID {pid}) exited while starting. Last lines of {self.console_log}:\n"
                    f"{_tail(self.console_log)}"
                )
            result = self.cli("core waitfullybooted", timeout_s=max(1.0, deadline - time.monotonic()))
            if result.returncode == 0 and "fully booted" in result.stdout.lower():
                return
            last = (result.stdout + result.stderr).strip()
            # the control socket is not there yet: try again shortly (start-up takes well under a second)
            time.sleep(0.05)
        raise AsteriskError(f"Asterisk (PID {pid}) was not fully booted after {timeout_s:.0f} s: {last}")

    def down(self, timeout_s: float = 15.0) -> bool:
        """Stop the local Asterisk by its PID (``core stop now``, then signals) and unmount.

        Returns True when a running Asterisk was stopped.
        """
        pid = self.pid()
        stopped = False
        if pid is not None:
            _need_root("stopping the local Asterisk")
            self.cli("core stop now", timeout_s=5.0)
            self._stop_pid(pid, grace_s=timeout_s)
            stopped = True
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        others = self.other_asterisks()
        if others:  # another instance still runs in this chroot: its shared folders stay mounted
            log.info("the shared folders stay mounted: Asterisk PID(s) %s still run in %s", others, self.root)
        elif self.root.exists() and mounts_under(self.root):
            self._unmount_all()
        return stopped

    def other_asterisks(self) -> list[int]:
        """PIDs of the Asterisk processes running in this chroot (any instance): /proc/<pid>/root."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "root") != str(self.root):
                    continue
            except OSError:
                continue
            pid = int(entry.name)
            if _process_alive(pid) and _is_asterisk(pid):
                found.append(pid)
        return sorted(found)

    def _stop_pid(self, pid: int, grace_s: float) -> None:
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and _process_alive(pid):
                log.warning("Asterisk (PID %d) still running: sending %s", pid, sig.name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if self._wait_exit(pid, grace_s if sig is None else 5.0):
                return
        raise AsteriskError(f"Asterisk (PID {pid}) did not stop, even after SIGKILL")

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _process_alive(pid):
                return True
            time.sleep(0.05)  # not our child: poll its /proc entry until it is gone
        return not _process_alive(pid)

    def status(self) -> AsteriskStatus:
        pid = self.pid()
        version = ""
        if pid is not None:
            result = self.cli("core show version", timeout_s=5.0)
            version = result.stdout.strip().split(" built ")[0] if result.returncode == 0 else ""
        return AsteriskStatus(
            installed=self.installed(),
            running=pid is not None,
            pid=pid,
            root=self.root,
            etc_dir=self.etc_dir,
            ami=(self.settings.ami_host, self.settings.ami_port),
            sip_port=int(self.environ.get("IVR_SIP_PORT", "5060")),
            agi_url=agi_url(self.settings, self.environ),
            version=version,
        )


def _is_root() -> bool:
    return os.geteuid() == 0


def _need_root(what: str) -> None:
    if not _is_root():
        raise AsteriskNeedsRoot(f"{what} needs root (chroot and mount); run it as root or with sudo")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AsteriskError(f"{what} failed: {' '.join(command)}: {result.stderr.strip() or result.returncode}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
