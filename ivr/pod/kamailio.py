"""Several pods behind one SIP address: the Kamailio configuration (``ivr pod kamailio-config``).

Kamailio (Debian's ``kamailio`` 5.6) is a stateful SIP proxy in front of the pods' Asterisks; it carries
signalling only (the RTP flows between the caller and the pod's Asterisk). Its dispatcher module holds the
pods as one destination set:

- **which pod**: ``ds_select_dst(set, "0")``, a hash of the Call-ID, so that an INVITE repeated with
  credentials after Asterisk's 401 (same Call-ID) reaches the Asterisk that issued the nonce;
- **is a pod alive**: an OPTIONS to every pod each ``ping_interval_s`` (``ds_probing_mode`` 1); a 2xx or a
  401/403/404/405/407 counts (Asterisk challenges an OPTIONS from an unknown sender with 401: the pod is
  up), not tm's own 408 for no reply at all; ``threshold`` failed ones mark it inactive, as many answered
  ones mark it active again;
- **failover**: an INVITE that a pod answers with 5xx, or not at all within ``invite_timeout_s``, marks the
  pod inactive and goes to the next one (``failure_route`` + ``ds_next_dst``): the caller hears ringing a
  little longer, not a failure;
- **in-dialog requests**: INVITEs are record-routed, so the BYE, re-INVITEs and NOTIFYs of a call go
  through Kamailio to the pod that answered it (``loose_route``);
- **is a pod's robot alive** (when the pod names its robot's health URL): a pod whose Asterisk answers
  but whose robot does not would give every caller the dialplan's apology and a person. A timer process
  (``rtimer``) asks each pod's ``/health?part=dialogue`` (``http_client``) every ``health_interval_s``;
  ``threshold`` failed answers in a row mark its robot down in a shared table (``htable``), as many good
  ones up again. New calls skip a pod whose robot is down while another pod is left; when no pod has a
  robot, the call still goes to a live Asterisk, whose dialplan puts it through to a person. The
  dispatcher's own states (the OPTIONS probing) are left alone: the two checks answer different questions.

The generated text is a complete ``kamailio.cfg`` plus a ``dispatcher.list``; ``check`` runs
``kamailio -c`` on them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

DISPATCHER_SET = 1
MODULES_DIR = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
_HOST = re.compile(r"[A-Za-z0-9.-]+")
_HEALTH_URL = re.compile(r"http://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[A-Za-z0-9._~/?=&%-]*")


@dataclasses.dataclass(frozen=True)
class Pod:
    """One pod's SIP address (its Asterisk's UDP transport)."""

    host: str
    port: int = 5060
    health: str = ""  # the pod's robot: its /health?part=dialogue URL ("": not checked)

    def __post_init__(self) -> None:
        if self.health and not _HEALTH_URL.fullmatch(self.health):
            raise ValueError(f"a robot's health URL is http://HOST:PORT/PATH (no quotes or spaces), got {self.health!r}")

    @classmethod
    def parse(cls, text: str, health: str = "") -> Pod:
        """``HOST`` or ``HOST:PORT`` (an IPv4 address or a DNS name)."""
        host, _, port = text.strip().partition(":")
        if not _HOST.fullmatch(host) or (port and not port.isdigit()):
            raise ValueError(f"a pod is HOST or HOST:PORT, got {text!r}")
        number = int(port) if port else 5060
        if not 0 < number < 65536:
            raise ValueError(f"a pod's port is 1-65535, got {text!r}")
        return cls(host, number, health)

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class KamailioConfig:
    """What the generated configuration depends on."""

    pods: tuple[Pod, ...]
    listen: Pod = Pod("127.0.0.1", 5070)  # where callers (carriers, SIPp) send their INVITEs
    list_file: Path = Path("/etc/kamailio/dispatcher.list")
    ping_interval_s: int = 2
    threshold: int = 2  # unanswered OPTIONS before a pod is inactive; answered ones before it is active again
    invite_timeout_s: float = 2.0  # no reply at all to an INVITE: try the next pod
    health_interval_s: int = 1  # each robot's health URL asked every so many seconds
    health_timeout_s: int = 1  # an answer slower than this is a failed one (a hung robot)
    children: int = 2
    modules_dir: str = MODULES_DIR

    def __post_init__(self) -> None:
        if not self.pods:
            raise ValueError("at least one pod (--pod HOST:PORT)")
        if self.listen.uri in {pod.uri for pod in self.pods}:  # by address: a pod may carry a health URL
            raise ValueError("Kamailio cannot listen on a pod's own address")
        try:
            ipaddress.IPv4Address(self.listen.host)
        except ValueError:
            raise ValueError(f"Kamailio listens on an IPv4 address, got {self.listen.host!r}") from None
        if min(self.ping_interval_s, self.threshold, self.children, self.health_interval_s, self.health_timeout_s) < 1 \
                or self.invite_timeout_s <= 0:  # fmt: skip
            raise ValueError("ping interval, threshold, INVITE timeout, children and health timings must be positive")
        if len({pod.uri for pod in self.pods}) != len(self.pods):
            raise ValueError("a pod is listed twice")
        if any(c in str(self.list_file) for c in '"\r\n'):
            raise ValueError("the dispatcher list's path goes into a quoted string")


def dispatcher_list(config: KamailioConfig) -> str:
    """The dispatcher.list: one line per pod, all in set 1."""
    lines = ["# generated by `ivr pod kamailio-config`: setid destination flags priority attributes"]
    for index, pod in enumerate(config.pods):
        lines.append(f"{DISPATCHER_SET} {pod.uri} 0 0 pod={index}")
    return "\n".join(lines) + "\n"


def kamailio_cfg(config: KamailioConfig) -> str:
    """A complete kamailio.cfg for the pods of ``config`` (checked by ``kamailio -c -f``)."""
    listen = config.listen
    return _TEMPLATE.format(
        pods=", ".join(f"{p.host}:{p.port}" for p in config.pods),
        listen=f"{listen.host}:{listen.port}",
        listen_host=listen.host,
        children=config.children,
        mpath=config.modules_dir,
        list_file=config.list_file,
        ping_interval=config.ping_interval_s,
        threshold=config.threshold,
        fr_timer_ms=round(config.invite_timeout_s * 1000),
        set=DISPATCHER_SET,
        **_robot_check(config),
    )


def _robot_check(config: KamailioConfig) -> dict[str, str]:
    """The template's robot-check parts: the modules, the pick in the request route, the routes (all
    empty when no pod names its robot's health URL)."""
    checked = [pod for pod in config.pods if pod.health]
    if not checked:
        return {"robot_modules": "", "robot_pick": "", "robot_routes": ""}
    asks = "".join(f'    $var(pod) = "{pod.uri}";\n    $var(url) = "{pod.health}";\n    route(ROBOT_ASK);\n' for pod in checked)
    return {
        "robot_modules": _ROBOT_MODULES.format(interval=config.health_interval_s, timeout=config.health_timeout_s),
        "robot_pick": "    route(ROBOT_PICK);\n",
        "robot_routes": _ROBOT_ROUTES.format(asks=asks, threshold=config.threshold),
    }


def write(config: KamailioConfig, folder: Path) -> tuple[Path, Path]:
    """``kamailio.cfg`` and ``dispatcher.list`` (the one ``config.list_file`` names) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "kamailio.cfg"
    cfg.write_text(kamailio_cfg(config), encoding="ascii")
    config.list_file.parent.mkdir(parents=True, exist_ok=True)
    config.list_file.write_text(dispatcher_list(config), encoding="ascii")
    return cfg, config.list_file


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
    )


def check(cfg: Path) -> subprocess.CompletedProcess[str]:
    """``kamailio -c -f cfg``: parses the configuration and loads the modules, starts nothing."""
    binary = kamailio_binary()
    if binary is None:
        raise FileNotFoundError("kamailio is not installed: apt-get install kamailio (make setup does)")
    return subprocess.run(
        [binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
    )


def command_line(cfg: Path, *, pid_file: Path | None = None) -> list[str]:
    """Kamailio in the foreground (``-DD``), logging to stderr (``-E``), small memory pools."""
    binary = kamailio_binary() or "kamailio"
    command = [binary, "-DD", "-E", "-m", "64", "-M", "8", "-f", str(cfg)]
    if pid_file is not None:
        command += ["-P", str(pid_file)]
    return command


def parse_pods(values: Sequence[str], health: Sequence[str] = ()) -> tuple[Pod, ...]:
    """The pods, and their robots' health URLs (none, or one per pod in the same order)."""
    if health and len(health) != len(values):
        raise ValueError(f"one robot health URL per pod, in the same order: {len(values)} pods, {len(health)} URLs")
    return tuple(Pod.parse(v, h) for v, h in zip(values, health or [""] * len(values), strict=True))


_TEMPLATE = """#!KAMAILIO
# Generated by `ivr pod kamailio-config`: several pods behind one SIP address.
# Pods: {pods} (dispatcher set {set}, {list_file}).
# Kamailio carries SIP only; each call's RTP flows between the caller and its pod's Asterisk.
# Check: kamailio -c -f kamailio.cfg    Run: kamailio -DD -E -f kamailio.cfg (add -u/-g kamailio in production)

debug=2
log_stderror=no
log_facility=LOG_LOCAL0
log_prefix="{{$mt $hdr(CSeq) $ci}} "
children={children}
listen=udp:{listen}
# no alias: "myself" is this address and port only (an alias without a port would make every port of the
# host "myself", and a pod on the same address, as in the tests, unreachable for in-dialog requests)
auto_aliases=no
# no TCP: the pods and the callers here speak UDP
disable_tcp=yes

mpath="{mpath}"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "dispatcher.so"
{robot_modules}
# an INVITE with no reply at all within fr_timer goes to the next pod (failure_route); once a pod has
# answered with a provisional reply (100 Trying), fr_inv_timer covers the ringing
modparam("tm", "fr_timer", {fr_timer_ms})
modparam("tm", "fr_inv_timer", 120000)
modparam("tm", "failure_reply_mode", 3)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 1)

modparam("dispatcher", "list_file", "{list_file}")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_ping_method", "OPTIONS")
modparam("dispatcher", "ds_ping_from", "sip:kamailio@{listen_host}")
modparam("dispatcher", "ds_ping_interval", {ping_interval})
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", {threshold})
modparam("dispatcher", "ds_inactive_threshold", {threshold})
# Asterisk answers an OPTIONS with 200, or challenges it (401): both mean the pod is up. Not all of class 4:
# a pod that does not answer at all yields tm's own 408, which must count as down
modparam("dispatcher", "ds_ping_reply_codes", "class=2;code=401;code=403;code=404;code=405;code=407")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    # in-dialog requests (ACK of a 200, BYE, re-INVITE, NOTIFY) follow the recorded route
    if (has_totag()) {{
        if (loose_route()) {{
            xlog("L_NOTICE", "ivr-pod in-dialog $rm to $ru\\n");
            route(RELAY);
        }}
        if (is_method("ACK") && t_check_trans()) {{
            route(RELAY);  # the ACK of a failed INVITE: tm sends its own
        }}
        if (!is_method("ACK")) {{
            sl_send_reply("404", "Not here");
        }}
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            route(RELAY);
        }}
        exit;
    }}
    if (!is_method("ACK")) {{
        if (t_precheck_trans()) {{
            t_check_trans();  # a retransmission: tm answers it
            exit;
        }}
        t_check_trans();
    }}
    remove_hf("Route");
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {{
        sl_send_reply("200", "Keepalive");
        exit;
    }}
    if (is_method("INVITE|SUBSCRIBE")) {{
        record_route();
    }}
    # a hash of the Call-ID: the INVITE repeated with credentials reaches the pod that challenged it
    if (!ds_select_dst("{set}", "0")) {{
        xlog("L_WARN", "ivr-pod no pod available for $rm\\n");
        send_reply("503", "No pod available");
        exit;
    }}
{robot_pick}    xlog("L_NOTICE", "ivr-pod $rm to $du\\n");
    if (is_method("INVITE")) {{
        t_on_failure("POD_FAILED");
    }}
    route(RELAY);
}}

route[RELAY] {{
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}

failure_route[POD_FAILED] {{
    if (t_is_canceled()) {{
        exit;
    }}
    # no reply at all (a dead Asterisk), or a 5xx: that pod is marked inactive, the next one is tried
    if (t_check_status("5[0-9][0-9]") || (t_branch_timeout() && !t_branch_replied())) {{
        xlog("L_NOTICE", "ivr-pod failed $rm at $du ($T_reply_code): marked inactive\n");
        ds_mark_dst("ip");
        if (ds_next_dst()) {{
            xlog("L_NOTICE", "ivr-pod failover $rm to $du\\n");
            t_on_failure("POD_FAILED");
            route(RELAY);
        }}
        xlog("L_WARN", "ivr-pod no other pod for $rm\\n");
    }}
}}

# the probing marked a pod down or up ($ru: the pod; when a failed INVITE marked it, the line above says which)
event_route[dispatcher:dst-down] {{
    xlog("L_NOTICE", "ivr-pod down $ru\\n");
}}

event_route[dispatcher:dst-up] {{
    xlog("L_NOTICE", "ivr-pod up $ru\\n");
}}
{robot_routes}"""

_ROBOT_MODULES = """loadmodule "htable.so"
loadmodule "rtimer.so"
loadmodule "http_client.so"

# each pod's robot, asked over HTTP by one timer process; the verdicts in shared memory for every SIP worker
modparam("htable", "htable", "robot=>size=4;")
modparam("http_client", "connection_timeout", {timeout})
modparam("rtimer", "timer", "name=robots;interval={interval};mode=1;")
modparam("rtimer", "exec", "timer=robots;route=ROBOTS")
"""

_ROBOT_ROUTES = """
# a pod whose robot is down: skipped while another pod is left. When none is left the call still goes to
# a live Asterisk (its dialplan's apology and a person): never refused for want of a robot
route[ROBOT_PICK] {{
    $var(more) = 1;
    while ($sht(robot=>$du) == 1 && $var(more) == 1) {{
        $var(skipped) = $du;
        if (ds_next_dst()) {{
            xlog("L_NOTICE", "ivr-pod robot down at $var(skipped): $rm to $du instead\\n");
        }} else {{
            $var(more) = 0;
            xlog("L_WARN", "ivr-pod no pod with a robot: $rm to $du, whose dialplan puts it through to a person\\n");
        }}
    }}
}}

route[ROBOTS] {{
{asks}}}

# $var(pod): the pod's SIP URI (the key), $var(url): its robot's health URL. {threshold} failed answers in a
# row (an error status, no answer within the timeout, a refused connection) mark it down, as many good ones up
route[ROBOT_ASK] {{
    $var(code) = http_client_query("$var(url)", "$var(reply)");
    if ($var(code) == 200) {{
        $sht(robot=>$var(pod)::failed) = 0;
        if ($sht(robot=>$var(pod)) == 1) {{
            $sht(robot=>$var(pod)::good) = $sht(robot=>$var(pod)::good) + 1;
            if ($sht(robot=>$var(pod)::good) >= {threshold}) {{
                $sht(robot=>$var(pod)) = 0;
                xlog("L_NOTICE", "ivr-pod robot up $var(pod)\\n");
            }}
        }}
    }} else {{
        $sht(robot=>$var(pod)::good) = 0;
        if ($sht(robot=>$var(pod)) != 1) {{
            $sht(robot=>$var(pod)::failed) = $sht(robot=>$var(pod)::failed) + 1;
            if ($sht(robot=>$var(pod)::failed) >= {threshold}) {{
                $sht(robot=>$var(pod)) = 1;
                xlog("L_NOTICE", "ivr-pod robot down $var(pod) ($var(code))\\n");
            }}
        }}
    }}
}}
"""
