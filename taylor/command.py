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

A worker like any user's: it depends on the worker, the launcher's ``spawn`` (to start its program
as the boss starts processes) and the sources; it must not import the boss loop, the Boss or the
command line.
"""

from __future__ import annotations

import json
import os
import shlex
import string
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from .errors import InstructionsError, WorkerError, describe_exit
from .local import spawn
from .worker import DirectSpec, Worker

__all__ = ["CommandWorker", "CommandFailed", "template_keys", "expand_braces", "render", "check_template", "as_text"]

#: Bytes read from the end of each output stream for the report's tails.
TAIL_BYTES = 4096

#: Outputs up to this size go back to the caller in the report itself (``outdir``); larger ones as a file.
INLINE_BYTES = 1 << 16

# Find the temporary directory once, here, rather than in every worker process
# (finding it writes a probe file).
_TMPDIR = tempfile.gettempdir()


#: GNU parallel's replacement-string modifiers, longest first: {x/.} {x//} {x/} {x.}.
MODIFIERS = ("/.", "//", "/", ".")
#: Instruction key ``taylor run`` sets to the task's number, for ``{#}``.
SEQ_KEY = "taylor_seq"


def _split_field(field: str) -> tuple:
    """``(key, modifier)`` of a placeholder: ``file/.`` is ``('file', '/.')``, ``.`` is ``('', '.')``."""
    for modifier in MODIFIERS:
        if field.endswith(modifier):
            return field[:-len(modifier)], modifier
    return field, ""


def _valid_key(key: str) -> bool:
    return key.isidentifier() or key.isdigit()


def template_keys(template: str) -> List[str]:
    """The instruction keys a template's placeholders name, in order (``{{`` is a brace).

    ``{file}``, ``{file.}``, ``{file/}``, ``{file//}``, ``{file/.}`` all name
    ``file``; ``{1}`` names ``1`` (the first ``:::`` group); ``{#}`` and ``{%}``
    name no key; ``{}`` (and ``{.}``...) are rewritten by :func:`expand_braces`
    before, and are kept as ``''`` here.
    """
    keys = []
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InstructionsError(f"the command template {template!r} is malformed: {exc} "
                                "(write {{ and }} for literal braces)") from None
    for _, field, _, _ in fields:
        if field is None or field in ("#", "%"):
            continue
        key, _ = _split_field(field)
        if key and not _valid_key(key):
            raise InstructionsError(f"placeholder {{{field}}} in the command template {template!r} must be a "
                                    "plain instruction key such as {file}, optionally with a modifier "
                                    "({file.} {file/} {file//} {file/.}); write {{ and }} for literal braces")
        if key not in keys:
            keys.append(key)
    return keys


def expand_braces(template: str, keys: Sequence[str]) -> str:
    """``template`` with ``{}`` (and ``{.}``, ``{/}``, ``{//}``, ``{/.}``) turned into the named ``keys``.

    As in GNU parallel, ``{}`` is the whole input: with several values, each
    one (quoted apart) separated by a space.  Literal text and other fields
    are kept as written.
    """
    if "{" not in template:
        return template
    template_keys(template)  # a malformed template is said plainly
    out = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        key, modifier = _split_field(field)
        tail = (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
        if key or field in ("#", "%"):
            out.append("{" + field + tail + "}")
        elif not keys:
            raise InstructionsError(f"{{{field}}} in the command template {template!r} needs input values")
        else:
            out.append(" ".join("{" + k + modifier + tail + "}" for k in keys))
    return "".join(out)


def check_template(template: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Raise :class:`InstructionsError` if a placeholder names a key some instruction set lacks."""
    keys = template_keys(template)
    if "" in keys:
        raise InstructionsError(f"{{}} in the command template {template!r} needs input values (give ::: VALUES, "
                                "-i KEY=... or --from FILE)")
    for index, row in enumerate(rows):
        missing = [k for k in keys if k not in row and k != "name"]
        if missing:
            have = ", ".join(sorted(k for k in row if k != "command")) or "none"
            raise InstructionsError(f"unknown key {{{missing[0]}}} in the command template: instruction set "
                                    f"#{index + 1} has keys {have} (write {{{{ and }}}} for literal braces)")


def _modify(text: str, modifier: str) -> str:
    """GNU parallel's modifiers: ``.`` drops the extension, ``/`` keeps the basename, ``//`` the dirname."""
    if not modifier:
        return text
    if modifier == "//":
        head = os.path.dirname(text)
        return head if head else "."
    if modifier in ("/", "/."):
        text = os.path.basename(text)
    if modifier in (".", "/."):
        head, tail = os.path.split(text)
        stem, ext = os.path.splitext(tail)
        if ext and stem:
            text = os.path.join(head, stem) if head else stem
    return text


def as_text(value: Any) -> str:
    """A value as the command sees it: text as written; JSON values as JSON text (``true``, ``null``, ``2.5``)."""
    if isinstance(value, str):
        return value
    return _json_text(value)


def _json_text(value: Any) -> str:
    from .sources import Written

    if isinstance(value, Written):  # a number as written in the file
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + _json_text(v)
                              for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _numeric(value: Any) -> Any:
    """A text value as a number, for a numeric format spec such as ``{n:03d}``; unchanged if it is none."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _word(value: Any, spec: str, modifier: str) -> str:
    if spec:
        text = format(_numeric(value), spec)
    else:
        text = as_text(value)
    return shlex.quote(_modify(text, modifier))


def render(template: str, values: Mapping[str, Any]) -> str:
    """The shell command for ``values``: each ``{key}`` becomes the shell-quoted value.

    Values are the text as written (JSON ones as JSON text); a format spec
    applies before quoting (``{n:03d}`` reads text as a number); lists and
    tuples become several quoted words.  GNU parallel's modifiers work on any
    key (``{file/.}``), ``{#}`` is the task number and ``{%}`` its slot (1 to -j).
    """
    if "{" not in template and "}" not in template:
        return template
    out = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        if field is None:
            continue
        if field == "%":
            ticket = values.get("scheduler_ticket")
            out.append(str(1 if ticket is None else int(ticket) + 1))
            continue
        key, modifier = (SEQ_KEY, "") if field == "#" else _split_field(field)
        if key not in values:
            if key == SEQ_KEY:
                raise InstructionsError(f"{{#}} in the command template {template!r} needs the task number "
                                        f"(instruction {SEQ_KEY!r}, which taylor run sets)")
            raise InstructionsError(f"unknown key {{{key}}} in the command template {template!r}; "
                                    f"the instructions have keys {', '.join(sorted(map(str, values)))}")
        value = values[key]
        if conversion == "r":
            value = repr(value)
        elif conversion == "s":
            value = str(value)
        if isinstance(value, (list, tuple)):
            out.append(" ".join(_word(v, spec, modifier) for v in value))
        else:
            out.append(_word(value, spec, modifier))
    return "".join(out)


def _tail(fd: int, lines: int, size: int, data: Optional[bytes] = None) -> str:
    """The last ``lines`` lines of what was written to ``fd`` (at most TAIL_BYTES of it, from ``data`` if read)."""
    if lines <= 0 or not size:
        return ""
    if data is not None:
        chunk = data[-TAIL_BYTES:]
    else:
        chunk = os.pread(fd, TAIL_BYTES, max(0, size - TAIL_BYTES))
    return "\n".join(chunk.decode(errors="replace").splitlines()[-lines:])


def _hand_over(fd: int, size: int, path: Optional[str], outdir: str, name: str) -> tuple:
    """How the caller gets a stream's whole output: ``(bytes, None)`` when small, else ``(None, path)``.

    A large output stays on disk: its named file if it has one, else the
    anonymous file linked into ``outdir`` (copied where linking is refused),
    for the caller to stream and delete.
    """
    if size <= INLINE_BYTES:
        return os.pread(fd, size, 0), None
    if path:
        return None, path
    target = os.path.join(outdir, name)
    try:
        os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)
    except OSError:
        copy = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            offset = 0
            while offset < size:
                sent = os.sendfile(copy, fd, offset, size - offset)
                if not sent:
                    break
                offset += sent
        finally:
            os.close(copy)
    return None, target


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
            outdir=dict(
                info="Hand the whole output to the caller: small outputs in the report (stdout_data, "
                     "stderr_data: bytes), larger ones as files in this directory (stdout_file, stderr_file).",
                optional=True,
                default=None,
            ),
            live=dict(
                info="With outdir: write the output to outdir/<name>.out and .err as it comes (line streaming).",
                type=bool,
                optional=True,
                default=False,
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
        folder = self.logdir or (self.outdir if self.live else None)
        if not folder:
            return _scratch_fd(), _scratch_fd(), None, None
        os.makedirs(folder, exist_ok=True)
        safe = str(self.name).replace(os.sep, "_")
        paths = os.path.join(folder, safe + ".out"), os.path.join(folder, safe + ".err")
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
        """The report of a command that ended with ``code``; raises CommandFailed unless it is 0.

        With ``logdir``, an empty log is removed (its key left out); with
        ``outdir``, the report also carries the whole output (see :func:`_hand_over`).
        """
        result = dict(command=command, exit_code=code, duration=duration)
        outdir, live = self.outdir, self.live
        for stream, fd, path in (("stdout", out, out_path), ("stderr", err, err_path)):
            size = os.fstat(fd).st_size
            data = handed = None
            if outdir and size:
                if live:
                    handed = path
                else:
                    data, handed = _hand_over(fd, size, path, outdir, f"{self.name}.{stream}".replace(os.sep, "_"))
            result[stream + "_tail"] = _tail(fd, self.tail, size, data)
            if data is not None:
                result[stream + "_data"] = data
            if handed is not None:
                result[stream + "_file"] = handed
            if path and self.logdir:
                if size:
                    result[stream + "_log"] = path
                else:
                    os.unlink(path)
            elif path and not size:  # a live file with nothing in it: nothing to hand over
                os.unlink(path)
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
