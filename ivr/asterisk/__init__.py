"""The Asterisk side: the shipped configuration, a local Asterisk (Debian sid chroot), AMI and test calls.

- ``local``: install (debootstrap), render the configuration, start/stop by PID, status.
- ``ami``: a thread-backed AMI client (the ``asterisk-ami`` package) usable from asyncio.
- ``testcall``: call files placed as real calls through the local Asterisk (``ivr replay --asterisk``).
"""

from ivr.asterisk.local import AsteriskError, AsteriskUnavailable

__all__ = ["AsteriskError", "AsteriskUnavailable"]
