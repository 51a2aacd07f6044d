"""The command worker: run one shell command per instruction set.

``taylor run --command TEMPLATE`` uses it, and so can library users::

    from taylor import batch_main
    from taylor.command import CommandWorker  # noqa: F401 - registers the worker

    batch_main(dict(command='gzip -k {file}'), dict(file=['a.txt', 'b.txt']))

``{key}`` placeholders take the worker's instruction values, always
shell-quoted, so that no value can inject shell code.  The report holds the
exit code, the duration and the last lines of stdout and stderr; a non-zero
exit (or death by a signal) is a task failure, a :class:`CommandFailed`
carrying the same figures.
"""

from __future__ import annotations

import os
import shlex
import string
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional

from .errors import InstructionsError, WorkerError, describe_exit
from .launcher import spawn
from .worker import DirectSpec, Worker

__all__ = ["CommandWorker", "CommandFailed", "template_keys", "render", "check_template"]

#: Bytes read from the end of each output stream for the report's tails.
TAIL_BYTES = 4096

# Find the temporary directory once, here, rather than in every worker process
# (finding it writes a probe file).
_TMPDIR = tempfile.gettempdir()


def template_keys(template: str) -> List[str]:
    """The instruction keys a template's ``{key}`` placeholders name, in order (``{{`` is a brace)."""
    keys = []
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InstructionsError(f"the command template {template!r} is malformed: {exc} "
                                "(write {{ and }} for literal braces)") from None
    for _, field, _, _ in fields:
        if field is None:
            continue
        if not field.isidentifier():
            raise InstructionsError(f"placeholder {{{field}}} in the command template {template!r} must be a "
                                    "plain instruction key such as {file} (write {{ and }} for literal braces)")
        if field not in keys:
            keys.append(field)
    return keys


def check_template(template: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Raise :class:`InstructionsError` if a placeholder names a key some instruction set lacks."""
    keys = template_keys(template)
    for index, row in enumerate(rows):
        missing = [k for k in keys if k not in row and k != "name"]
        if missing:
            have = ", ".join(sorted(k for k in row if k != "command")) or "none"
            raise InstructionsError(f"unknown key {{{missing[0]}}} in the command template: instruction set "
                                    f"#{index + 1} has keys {have}")


def render(template: str, values: Mapping[str, Any]) -> str:
    """The shell command for ``values``: each ``{key}`` becomes the shell-quoted value.

    A format spec applies before quoting (``{n:03d}``); lists and tuples become
    several quoted words.
    """
    if "{" not in template and "}" not in template:
        return template
    out = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        if field is None:
            continue
        if field not in values:
            raise InstructionsError(f"unknown key {{{field}}} in the command template {template!r}; "
                                    f"the instructions have keys {', '.join(sorted(values))}")
        value = values[field]
        if conversion == "r":
            value = repr(value)
        elif conversion == "s":
            value = str(value)
        if isinstance(value, (list, tuple)):
            out.append(" ".join(shlex.quote(format(v, spec or "")) for v in value))
        else:
            out.append(shlex.quote(format(value, spec or "")))
    return "".join(out)


def _tail(fd: int, lines: int) -> str:
    """The last ``lines`` lines of what was written to ``fd`` (at most TAIL_BYTES of it)."""
    if lines <= 0:
        return ""
    size = os.fstat(fd).st_size
    if not size:
        return ""
    text = os.pread(fd, TAIL_BYTES, max(0, size - TAIL_BYTES)).decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _scratch_fd() -> int:
    """An anonymous file for a command's output: nothing to name or delete, on disk (not in memory)."""
    flags = getattr(os, "O_TMPFILE", 0)
    if flags:
        try:
            return os.open(_TMPDIR, flags | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:  # a file system without O_TMPFILE
            pass
    return os.dup(tempfile.TemporaryFile().fileno())  # the dup outlives the file object


#: Characters and first words that need a shell; commands free of them are run without one.
_SHELL_CHARS = frozenset("$`\\;&|<>(){}*?[]~#!\n\r\t=%^")
_SHELL_WORDS = frozenset(
    ". : [ [[ alias bg break case cd command continue do done echo elif else esac eval exec exit export fg fi "
    "for function getopts hash if jobs kill local printf pwd read readonly return select set shift source test "
    "then time times trap type ulimit umask unalias unset until wait while".split())


def _plain_words(command: str):
    """The argument list of ``command`` if /bin/sh would run it as one plain program call, else None.

    Plain means: words and quotes only, no expansion, redirection, operator,
    assignment or shell built-in, so that running the program directly gives
    exactly what ``sh -c`` would, one exec cheaper.
    """
    if _SHELL_CHARS.intersection(command) or '"' in command:
        return None
    if "'" in command:
        try:
            words = shlex.split(command)
        except ValueError:
            return None
    else:
        words = command.split(" ")  # no quote, no tab or newline: sh splits on spaces alone
        words = [w for w in words if w]
    if not words or words[0] in _SHELL_WORDS:
        return None
    return words


def _argvs(command: str) -> List[List[str]]:
    """The argument lists to try, in order, to run ``command`` as ``/bin/sh -c`` would."""
    words = _plain_words(command)
    shell = ["/bin/sh", "-c", command]
    return [shell] if words is None else [words, shell]


def _environ() -> Mapping[Any, Any]:
    # os.environb shares os.environ's data, and spares encoding every variable again.
    return os.environb if os.supports_bytes_environ else os.environ


def _shell(command: str, out: int, err: int, env: Mapping[Any, Any]) -> int:
    """Run ``command`` as ``/bin/sh -c`` would (directly when it is a plain program call, see
    :func:`_plain_words`), stdin from /dev/null; return its exit code (-N: killed by signal N)."""
    if not hasattr(os, "posix_spawn"):
        return subprocess.call(command, shell=True, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
    _, status = os.waitpid(spawn(_argvs(command), out, err, env), 0)
    return os.waitstatus_to_exitcode(status)


class CommandFailed(WorkerError):
    """The command exited non-zero or was killed.

    Carries ``command``, ``exit_code`` (negative: killed by that signal),
    ``duration``, ``stdout_tail``, ``stderr_tail`` and the log paths, if any.
    """


class CommandWorker(Worker):
    """Runs ``command`` (a template) through ``/bin/sh``, once per instruction set.

    The command runs in the worker's process group, so stopping the worker
    (timeout, failure elsewhere, SIGTERM to the run) stops it and whatever it
    started.  It finds ``TAYLOR_WORKER_NAME`` (and, when the scheduler hands
    out tickets, ``TAYLOR_TICKET``) in its environment.

    Unless hooks must run first (``--bind``), the boss starts the command
    itself (:meth:`_direct_spec`): the command is then the worker process,
    with the same report, failures and logs, one fork of Python cheaper.
    """

    _footprint = dict(
        info="Run a shell command",
        attr=dict(
            command=dict(
                info="Shell command template; {key} takes the value of instruction key, shell-quoted.",
                type=str,
            ),
            logdir=dict(
                info="Directory for each task's full stdout and stderr (<name>.out, <name>.err).",
                optional=True,
                default=None,
            ),
            tail=dict(
                info="How many last lines of stdout and stderr the report keeps.",
                type=int,
                optional=True,
                default=10,
            ),
        ),
    )

    def _values(self) -> Dict[str, Any]:
        # footprints keeps every instruction it was given, declared or not, in
        # _attributes: the keys a template names are mostly undeclared ones.
        values = dict(getattr(self, "_attributes", {}))
        values["name"] = self.name
        return values

    def _open_logs(self) -> tuple:
        if not self.logdir:
            return _scratch_fd(), _scratch_fd(), None, None
        os.makedirs(self.logdir, exist_ok=True)
        safe = str(self.name).replace(os.sep, "_")
        paths = os.path.join(self.logdir, safe + ".out"), os.path.join(self.logdir, safe + ".err")
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        out = os.open(paths[0], flags, 0o644)
        try:
            return out, os.open(paths[1], flags, 0o644), paths[0], paths[1]
        except BaseException:  # the boss opens these too: leak nothing
            os.close(out)
            raise

    def _command(self) -> str:
        command = self.command
        if "{" in command or "}" in command:
            command = render(command, self._values())
        return command

    def _task(self) -> Dict[str, Any]:
        command = self._command()
        os.environ["TAYLOR_WORKER_NAME"] = str(self.name)  # this process is the worker's own
        if self.scheduler_ticket is not None:
            os.environ["TAYLOR_TICKET"] = str(self.scheduler_ticket)
        out, err, out_path, err_path = self._open_logs()
        try:
            start = time.monotonic()
            code = _shell(command, out, err, _environ())
            return self._result(command, code, time.monotonic() - start, out, err, out_path, err_path)
        finally:
            os.close(out)
            os.close(err)

    def _result(self, command: str, code: int, duration: float, out: int, err: int,
                out_path: Optional[str], err_path: Optional[str]) -> Dict[str, Any]:
        """The report of a command that ended with ``code``; raises CommandFailed unless it is 0."""
        result = dict(command=command, exit_code=code, duration=duration,
                      stdout_tail=_tail(out, self.tail), stderr_tail=_tail(err, self.tail))
        if out_path:
            result.update(stdout_log=out_path, stderr_log=err_path)
        if code != 0:
            last = result["stderr_tail"].splitlines()[-1:] or result["stdout_tail"].splitlines()[-1:]
            said = f"; it last said: {last[0][:200]}" if last else ""
            raise CommandFailed(f"command {command!r} failed ({describe_exit(code)}) after {duration:.3g} s{said}",
                                worker=self.name, **result)
        return result

    def _direct_spec(self) -> Optional[DirectSpec]:
        """The command for the boss to start itself, the same as ``_task`` would, or None.

        None (a worker process runs ``_task``) when a subclass has its own
        ``_task``, when hooks must run in the worker's process (``--bind``),
        or where ``os.posix_spawn`` is missing.
        """
        if type(self)._task is not CommandWorker._task or self.scheduler_hooks or not hasattr(os, "posix_spawn"):
            return None
        command = self._command()
        environ = _environ()
        env = dict(environ)
        encode = os.fsencode if environ is os.environb else str
        env[encode("TAYLOR_WORKER_NAME")] = encode(str(self.name))
        if self.scheduler_ticket is not None:
            env[encode("TAYLOR_TICKET")] = encode(str(self.scheduler_ticket))
        out, err, out_path, err_path = self._open_logs()
        return DirectSpec(_argvs(command), env, out, err, context=(command, out_path, err_path))

    def _direct_report(self, spec: DirectSpec, exitcode: int, duration: float) -> Dict[str, Any]:
        command, out_path, err_path = spec.context
        return self._result(command, exitcode, duration, spec.stdout, spec.stderr, out_path, err_path)
