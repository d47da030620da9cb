"""``ivr pod config|up|down|status``: a local pod (HAProxy + N robot workers + the local Asterisk);
``ivr pod kamailio-config``: several pods behind Kamailio."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ivr.config import Settings

UP_TIMEOUT_S = 900.0  # every worker loads its Rasa agents: ~1 min each on a busy 2-core machine


def register(sub: argparse._SubParsersAction) -> None:
    pod = sub.add_parser("pod", help="several robot workers behind HAProxy on one machine (a pod)")
    pod_sub = pod.add_subparsers(dest="pod_command", metavar="ACTION", required=True)
    workers_help = "robot processes: a number or 'auto' (one per core; default: $IVR_WORKERS, else auto)"
    config = pod_sub.add_parser("config", help="print the HAProxy configuration the pod runs")
    config.add_argument("--workers", help=workers_help)
    config.set_defaults(handler=pod_config)
    up = pod_sub.add_parser("up", help="start the local Asterisk (if it is not running), HAProxy and the workers")
    up.add_argument("--workers", help=workers_help)
    up.add_argument("--no-asterisk", action="store_true", help="only HAProxy and the workers")
    up.add_argument("--text-input", action="store_true", help="development only: as `ivr serve --text-input`")
    up.add_argument("--timeout", type=float, default=UP_TIMEOUT_S, help="seconds to wait for every worker")
    up.set_defaults(handler=pod_up)
    down = pod_sub.add_parser("down", help="stop the pod (calls in progress finish first), and the Asterisk it started")
    down.set_defaults(handler=pod_down)
    status = pod_sub.add_parser("status", help="HAProxy, each worker (state, restarts, memory), the local Asterisk")
    status.add_argument("--json", action="store_true", help="the pod's /health document")
    status.set_defaults(handler=pod_status)
    kam = pod_sub.add_parser(
        "kamailio-config", help="several pods behind Kamailio's dispatcher: print (or write) kamailio.cfg + dispatcher.list"
    )
    kam.add_argument("--pod", action="append", required=True, metavar="HOST:PORT",
                     help="a pod's Asterisk SIP address (UDP); repeat for each pod")
    kam.add_argument("--robot-health", action="append", default=[], metavar="URL",
                     help="a pod's robot health URL (http://HOST:PORT/health?part=dialogue: its `ivr serve`, or its "
                          "supervisor's, with IVR_HTTP_HOST reachable from Kamailio); one per --pod, in the same "
                          "order: new calls then skip a pod whose robot is down")
    kam.add_argument("--health-interval", type=int, default=1, metavar="S", help="each robot's health asked every S seconds")
    kam.add_argument("--health-timeout", type=int, default=1, metavar="S",
                     help="a robot that has not answered its health check within S seconds failed it")
    kam.add_argument("--listen", default="127.0.0.1:5070", metavar="HOST:PORT",
                     help="where Kamailio takes the calls (default 127.0.0.1:5070)")
    kam.add_argument("--list-file", default="/etc/kamailio/dispatcher.list", metavar="PATH",
                     help="the dispatcher list's path, as kamailio.cfg names it (default /etc/kamailio/dispatcher.list)")
    kam.add_argument("--ping-interval", type=int, default=2, metavar="S", help="OPTIONS to each pod every S seconds")
    kam.add_argument("--threshold", type=int, default=2,
                     help="unanswered OPTIONS before a pod is inactive (and answered ones before it is back)")
    kam.add_argument("--invite-timeout", type=float, default=2.0, metavar="S",
                     help="an INVITE a pod does not answer at all within S seconds goes to the next pod")
    kam.add_argument("--out", metavar="DIR",
                     help="write DIR/kamailio.cfg and the dispatcher list (--list-file, default DIR/dispatcher.list) "
                          "and check them with `kamailio -c`, instead of printing")
    kam.set_defaults(handler=pod_kamailio_config)


def _workers(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.pod.supervisor import worker_count

    value = args.workers or (settings.workers if "IVR_WORKERS" in os.environ or settings.workers != "1" else "auto")
    return worker_count(value)


def pod_config(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.pod.haproxy import render_config, worker_backends

    print(render_config(settings, worker_backends(settings, _workers(args, settings))), end="")
    return 0


def supervisor_pid(settings: Settings) -> int | None:
    """The running pod's supervisor, from ``pod_dir/pod.pid`` (None when there is none, or it is gone)."""
    try:
        pid = int((settings.pod_dir / "pod.pid").read_text(encoding="ascii").strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def pod_health(settings: Settings, timeout_s: float = 5.0) -> tuple[int, dict[str, Any]] | None:
    """The supervisor's ``/health``: (HTTP status, document), or None when it does not answer."""
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    conn = http.client.HTTPConnection(host, settings.http_port, timeout=timeout_s)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()



def every_worker_up(health: dict[str, Any]) -> bool:
    """The pod's ``/health`` document says every worker is up and HAProxy sees each one UP."""
    workers = health.get("workers", [])
    return bool(workers) and all(w.get("state") == "up" and w.get("haproxy") == "UP" for w in workers)


def pod_up(args: argparse.Namespace, settings: Settings) -> int:
    if supervisor_pid(settings) is not None:
        print(f"ivr pod up: a pod is already running (PID {supervisor_pid(settings)}); `ivr pod status`", file=sys.stderr)
        return 1
    count = _workers(args, settings)
    settings.pod_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.pod_dir, 0o700)
    started_flag = settings.pod_dir / "asterisk-started-by-pod"
    if not args.no_asterisk:
        from ivr.asterisk.local import AsteriskError, LocalAsterisk

        local = LocalAsterisk(settings)
        if local.pid() is None:
            try:
                status = local.up()
            except AsteriskError as exc:
                print(f"ivr pod up: the local Asterisk did not start: {exc}", file=sys.stderr)
                return 1
            started_flag.write_text(f"{status.pid}\n", encoding="ascii")
            print(f"== local Asterisk up (PID {status.pid})")
    log_path = settings.log_dir / "pod.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ivr", "--log-format", "json", "serve", "--workers", str(count)]
    if args.text_input:
        argv.append("--text-input")
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    print(f"== pod starting: supervisor PID {process.pid}, {count} workers, log {log_path}")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(f"ivr pod up: the pod exited ({process.returncode}); see {log_path}", file=sys.stderr)
            return 1
        got = pod_health(settings, 2.0)
        if got is not None and every_worker_up(got[1]):
            _print_status(got[1])
            return 0
        time.sleep(1.0)  # polling a starting server
    print(f"ivr pod up: not every worker answered within {args.timeout:.0f} s (still starting; `ivr pod status`)",
          file=sys.stderr)
    return 1


def pod_down(args: argparse.Namespace, settings: Settings) -> int:
    pid = supervisor_pid(settings)
    if pid is None:
        print("no pod was running")
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + settings.stop_grace_s + 60
        while time.monotonic() < deadline and supervisor_pid(settings) == pid:
            time.sleep(0.2)  # the supervisor finishes its calls, then removes its PID file
        if supervisor_pid(settings) == pid:
            print(f"ivr pod down: the supervisor (PID {pid}) is still running", file=sys.stderr)
            return 1
        print(f"pod stopped (supervisor PID {pid})")
    started_flag = settings.pod_dir / "asterisk-started-by-pod"
    if started_flag.exists():
        from ivr.asterisk.local import AsteriskError, LocalAsterisk

        try:
            LocalAsterisk(settings).down()
        except AsteriskError as exc:
            print(f"ivr pod down: {exc}", file=sys.stderr)
            return 1
        started_flag.unlink()
        print("local Asterisk stopped")
    return 0


def _print_status(document: dict[str, Any]) -> None:
    front = document["front_door"]
    print(f"pod: {document['status']} (supervisor PID {document['supervisor_pid']})")
    print(f"front door: HAProxy PID {front['haproxy_pid']} on {front['host']}:{front['port']}, "
          f"{'running' if front['running'] else 'NOT RUNNING'}, restarted {front['restarts']} times")
    for w in document["workers"]:
        memory = f"RSS {w.get('rss_kb', 0) / 1024:.0f} MB, PSS {w.get('pss_kb', 0) / 1024:.0f} MB" if w.get("rss_kb") else ""
        print(f"worker {w['worker']}: {w['state']:<10} (HAProxy: {w.get('haproxy') or '?'}) PID {w['pid']:<7} "
              f"FastAGI :{w['agi_port']} HTTP :{w['http_port']}  restarts {w['restarts']}  {memory}")


def pod_status(args: argparse.Namespace, settings: Settings) -> int:
    pid = supervisor_pid(settings)
    got = pod_health(settings) if pid is not None else None
    if got is None:
        print("pod: not running" if pid is None else f"pod: supervisor PID {pid} does not answer on :{settings.http_port}")
        code = 3
    else:
        if args.json:
            print(json.dumps(got[1], indent=2))
        else:
            _print_status(got[1])
            with contextlib.suppress(OSError):
                from ivr.pod.haproxy import stats

                for row in stats(Path(settings.pod_dir) / "haproxy.sock"):
                    if row.get("svname") not in ("FRONTEND", "BACKEND"):
                        print(f"HAProxy sees {row.get('svname')}: {row.get('status')}, "
                              f"{row.get('scur')} calls now, {row.get('stot')} in all")
        code = 0 if got[0] == 200 else 1
    if not args.json:
        from ivr.asterisk.local import LocalAsterisk

        print("local Asterisk: " + ("running" if LocalAsterisk(settings).pid() is not None else "not running"))
    return code


def pod_kamailio_config(args: argparse.Namespace, settings: Settings) -> int:
    from ivr.pod import kamailio

    list_file = Path(args.list_file)
    if args.out and args.list_file == "/etc/kamailio/dispatcher.list":
        list_file = Path(args.out).resolve() / "dispatcher.list"
    config = kamailio.KamailioConfig(
        pods=kamailio.parse_pods(args.pod, args.robot_health), listen=kamailio.Pod.parse(args.listen), list_file=list_file,
        ping_interval_s=args.ping_interval, threshold=args.threshold, invite_timeout_s=args.invite_timeout,
        health_interval_s=args.health_interval, health_timeout_s=args.health_timeout,
    )
    if not args.out:
        print(kamailio.kamailio_cfg(config), end="")
        print(f"\n# ---- {list_file} ----")
        print(kamailio.dispatcher_list(config), end="")
        return 0
    cfg, listed = kamailio.write(config, Path(args.out))
    print(cfg)
    print(listed)
    if kamailio.kamailio_binary() is None:
        print("kamailio is not installed: not checked (apt-get install kamailio)", file=sys.stderr)
        return 0
    checked = kamailio.check(cfg)
    if checked.returncode != 0:
        print(f"ivr pod kamailio-config: `kamailio -c` rejected {cfg}:\n{checked.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"checked: kamailio -c -f {cfg}: config file ok")
    return 0
