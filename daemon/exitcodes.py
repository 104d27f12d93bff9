"""The exit codes of every `gws-notifyd` command (sysexits.h, where one fits).

systemd's unit restarts on failure but not on EX_CONFIG or EX_NOPERM
(`RestartPreventExitStatus=`): a restart cannot mend a bad file or password.
"""

from __future__ import annotations

OK = 0
FAILURE = 1  # the command failed (a missing dead letter; a Send answered with an error, for `send`)
USAGE = 2  # argparse's own
UNAVAILABLE = 69  # GWS unreachable at start with wait_at_start = false; the daemon, for status
SOFTWARE = 70  # the store failed, or a task of the daemon ended on its own
NOPERM = 77  # GWS refused the credentials
CONFIG = 78  # bad configuration: one line on stderr naming the key
INTERRUPTED = 130  # Ctrl-C
