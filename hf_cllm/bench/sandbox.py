"""Running untrusted generated code: each program in its own Python process, never in the benchmark's.

Each run gets a throw-away working directory, a wall-clock time limit (the whole process group is killed), a CPU
limit, optionally an address-space (memory) limit, a small file-size limit, an empty environment, no network (sockets
refuse to open), and destructive functions disabled before the program starts (file removal, process spawning,
`os._exit`, ...: the guard OpenAI's human-eval applies). The defaults are the reference harness's: 3 s, no memory
limit.

A program passes when it runs to its end: the process exits with status 0 only when the program's code returned;
anything it raises, `SystemExit(0)` included, makes the guard fail with an error of its own. Nothing the program can
read or print tells a pass from a failure (no marker to copy), and the process-ending calls are disabled.

This contains accidents and careless code — an endless loop, a huge allocation, `shutil.rmtree`, an early exit; it is
not a security boundary against code written to escape the interpreter. For adversarial code, run the benchmark in
a container or VM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass


# Only `except:` and `0 / 0` run after the program: both are syntax, nothing the program could have replaced (a
# re-raise would pass on its SystemExit(0)); an uncaught ZeroDivisionError exits with status 1.
GUARD = r"""
import faulthandler, os, posix, shutil, socket, subprocess, sys
faulthandler.disable()
def _refuse(*args, **kwargs):
    raise PermissionError("disabled in the hf_cllm sandbox")
class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _refuse()
socket.socket = _NoSocket
for name in ("create_connection", "socketpair", "fromfd"):
    setattr(socket, name, _refuse)
for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
             "forkpty", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
             "chroot", "lchown", "link", "symlink", "execv", "execve", "execvp", "spawnv", "spawnve", "popen",
             "posix_spawn", "posix_spawnp", "_exit", "abort"):
    for module in (os, posix):
        if hasattr(module, name):
            setattr(module, name, _refuse)
shutil.rmtree = shutil.move = shutil.chown = _refuse
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _refuse
for name in ("ctypes", "_ctypes", "resource", "psutil", "_posixsubprocess"):
    sys.modules[name] = None
_program = compile(sys.stdin.read(), "<generated>", "exec")
try:
    exec(_program, {"__name__": "__main__"})
except:
    0 / 0
"""
FAILED = "During handling of the above exception, another exception occurred:"


@dataclass
class Outcome:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str = ""


def _limits(memory_bytes: int | None, cpu_seconds: int):
    def apply():
        import resource

        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_untrusted(program: str, timeout: float = 3.0, memory_mb: int | None = None) -> Outcome:
    """Run `program` (Python source) as described in the module docstring: passed = it ran to its end. `timeout`:
    wall-clock seconds (3, as human-eval); `memory_mb`: an address-space limit (None: none, as human-eval)."""
    with tempfile.TemporaryDirectory(prefix="hf_cllm_sandbox_") as workdir:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", GUARD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0"},
            start_new_session=True,  # its own process group: a timeout kills everything it started
            preexec_fn=_limits(None if memory_mb is None else memory_mb << 20, int(timeout) + 1),
            text=True,
        )
        try:
            _, stderr = process.communicate(program, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return Outcome(False, "timeout", f"killed after {timeout:g} s")
    if process.returncode == 0:
        return Outcome(True, "passed")
    # the program's own error is the traceback before the guard's
    lines = stderr.split(FAILED)[0].strip().splitlines() or [f"exit status {process.returncode}"]
    return Outcome(False, "failed", lines[-1][:300])
