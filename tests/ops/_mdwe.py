"""``python _mdwe.py PROGRAM ARGS...``: run PROGRAM under the kernel's
memory-deny-write-execute (``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``, Linux 6.3+),
the restriction systemd's ``MemoryDenyWriteExecute=yes`` applies (systemd 256 sets it
with this very prctl; older ones with an equivalent seccomp filter): no mapping may be
writable and executable, and none may become executable. It holds across fork and
execve, so the daemon's plugin processes are held to it too."""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

if __name__ == "__main__":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_MDWE) failed: {os.strerror(ctypes.get_errno())}")
    os.execv(sys.argv[1], sys.argv[1:])
