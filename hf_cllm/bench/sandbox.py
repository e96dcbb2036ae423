"""Running untrusted generated code: each program in its own Python process, never in the benchmark's.

Each run gets a throw-away working directory, a wall-clock time limit (the whole process group is killed), a CPU
limit, an address-space (memory) limit, a small file-size limit, an empty environment, no network (sockets refuse
to open), and destructive functions disabled before the program starts (file removal, process spawning, ...: the
guard OpenAI's human-eval applies). This contains accidents and careless code — an endless loop, a huge
allocation, `shutil.rmtree`; it is not a security boundary against code written to escape. For adversarial code,
run the benchmark in a container or VM.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass


GUARD = r"""
import faulthandler, os, shutil, socket, subprocess, sys
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
             "posix_spawn", "posix_spawnp", "_exit"):
    if hasattr(os, name):
        setattr(os, name, _refuse)
shutil.rmtree = shutil.move = shutil.chown = _refuse
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _refuse
for name in ("ctypes", "_ctypes", "resource", "psutil"):
    sys.modules[name] = None
sentinel, program = sys.stdin.read().split("\n", 1)
exec(compile(program, "<generated>", "exec"), {"__name__": "__main__"})
sys.stdout.write("\n" + sentinel)  # only a program that ran to its end passes (an early sys.exit(0) does not)
"""


@dataclass
class Outcome:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str = ""


def _limits(memory_bytes: int, cpu_seconds: int):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_untrusted(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> Outcome:
    """Run `program` (Python source) as described in the module docstring; passed = it ran to its end (exit status
    0 and the run's random end marker printed)."""
    sentinel = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="hf_cllm_sandbox_") as workdir:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", GUARD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0"},
            start_new_session=True,  # its own process group: a timeout kills everything it started
            preexec_fn=_limits(memory_mb << 20, int(timeout) + 1),
            text=True,
        )
        try:
            stdout, stderr = process.communicate(f"{sentinel}\n{program}", timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return Outcome(False, "timeout", f"killed after {timeout:g} s")
    if process.returncode == 0 and stdout.rstrip().endswith(sentinel):
        return Outcome(True, "passed")
    return Outcome(False, "failed", (stderr or f"exit status {process.returncode}").strip().splitlines()[-1][:300])
