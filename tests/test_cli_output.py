"""Issue 13, part 1: the tasks' output reaches the user (grouped, -k, --tag, --line-buffer, --quiet, --logdir,
progress), run through the real ``taylor`` command."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from processes import on_terminal
from test_cli import ROOT, taylor

WORKER = '''
import sys
import time

from taylor import Worker


class Talker(Worker):
    _footprint = dict(attr=dict(word=dict(), times=dict(type=int, optional=True, default=3)))

    def _task(self):
        for i in range(self.times):
            print(f"{self.word}-{i}", flush=True)
            time.sleep(0.05)
        print(f"{self.word}-err", file=sys.stderr, flush=True)
        return self.word
'''


def _contiguous(lines, prefixes):
    """Each prefix's lines form one block (grouped output)."""
    for prefix in prefixes:
        where = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert where, (prefix, lines)
        assert where == list(range(where[0], where[0] + len(where))), (prefix, lines)


def test_command_output_is_shown_grouped_stdout_and_stderr_apart(tmp_path):
    result = taylor("run", "-j", "3", "for i in 1 2 3 4; do echo {}-$i; sleep 0.05; done; echo {}-err >&2",
                    ":::", "a", "b", "c", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines) == sorted(f"{w}-{i}" for w in "abc" for i in range(1, 5))
    _contiguous(lines, ["a-", "b-", "c-"])
    assert sorted(line for line in result.stderr.splitlines() if line.endswith("-err")) == ["a-err", "b-err", "c-err"]
    # The first example prints its values.
    plain = taylor("run", "--command", "echo {x}", "-i", "x=1,2", cwd=tmp_path)
    assert sorted(plain.stdout.split()) == ["1", "2"]


def test_keep_order_prints_in_input_order(tmp_path):
    args = ("-j", "3", "sleep {}; echo {}", ":::", "1.2", "0.1", "0.6")
    unordered = taylor("run", *args, cwd=tmp_path)
    ordered = taylor("run", "-k", *args, cwd=tmp_path)
    assert unordered.stdout.split() == ["0.1", "0.6", "1.2"]
    assert ordered.stdout.split() == ["1.2", "0.1", "0.6"]


def test_keep_order_goes_past_tasks_that_never_ran(tmp_path):
    result = taylor("run", "-k", "-j", "1", "echo {}; test {} != b", ":::", "a", "b", "c", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.split() == ["a", "b"]  # c never started: the run stopped at b's failure


def test_tag_prefixes_each_line_with_the_values(tmp_path):
    result = taylor("run", "-k", "--tag", "echo one; echo two >&2", ":::", "x", "y", ":::", "1", cwd=tmp_path)
    assert result.stdout.splitlines() == ["x 1\tone", "y 1\tone"]
    # No {} in the command: the values are appended to it, as GNU parallel does.
    assert [line for line in result.stderr.splitlines() if "two" in line] == ["x 1\ttwo x 1", "y 1\ttwo y 1"]


def test_line_buffer_streams_lines_as_they_come(tmp_path):
    # a prints, waits a long time, prints again; b prints in between: only line buffering shows b between.
    command = "if [ {} = a ]; then echo a1; sleep 1.5; echo a2; else sleep 0.5; echo b1; fi"
    streamed = taylor("run", "-j", "2", "--line-buffer", command, ":::", "a", "b", cwd=tmp_path)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.split() == ["a1", "b1", "a2"]
    grouped = taylor("run", "-j", "2", command, ":::", "a", "b", cwd=tmp_path)
    assert grouped.stdout.split() == ["b1", "a1", "a2"]
    tagged = taylor("run", "-j", "2", "--lb", "--tag", command, ":::", "a", "b", cwd=tmp_path)
    assert tagged.stdout.splitlines() == ["a\ta1", "b\tb1", "a\ta2"]


def test_quiet_prints_no_task_output(tmp_path):
    result = taylor("run", "--quiet", "echo {}", ":::", "a", "b", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == ""


def test_large_output_is_streamed_whole_and_nothing_is_left_behind(tmp_path):
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    # 3 MB per task, more than travels in a report: it goes through a file, copied in chunks.
    command = "python3 -c \"import sys; sys.stdout.write(('{}' * 99 + chr(10)) * 30000)\""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TMPDIR=str(env_tmp))
    done = subprocess.run([sys.executable, "-m", "taylor", "run", "-k", "-j", "2", command, ":::", "a", "b", "c"],
                          cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = b"".join((w * 99 + "\n").encode() * 30000 for w in "abc")
    assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert not list(env_tmp.glob("taylor-output-*"))


def test_logdir_keeps_only_non_empty_outputs_named_after_the_task(tmp_path):
    result = taylor("run", "--logdir", "logs", "-i", "name=quiet,loud", "--command",
                    "test {name} = quiet || {{ echo said {name}; echo warned >&2; }}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["loud.err", "loud.out"]
    assert (tmp_path / "logs" / "loud.out").read_text() == "said loud\n"
    assert "said loud" in result.stdout  # kept and shown
    lined = taylor("run", "--logdir", "lb", "--line-buffer", "echo {}", ":::", "x", cwd=tmp_path)
    assert lined.stdout == "x\n" and (tmp_path / "lb" / "task-0001.out").read_text() == "x\n"


def test_unwritable_logdir_is_a_usage_error_before_anything_runs(tmp_path):
    (tmp_path / "afile").write_text("")
    result = taylor("run", "--logdir", "afile/logs", "touch ran", ":::", "x", cwd=tmp_path)
    assert result.returncode == 2 and "--logdir" in result.stderr
    assert not (tmp_path / "ran").exists()
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        denied = taylor("run", "--logdir", "ro", "touch ran", ":::", "x", cwd=tmp_path)
        assert denied.returncode == 2 and not (tmp_path / "ran").exists()


def test_worker_class_output_is_grouped_and_kept_in_logdir(tmp_path):
    (tmp_path / "talkers.py").write_text(WORKER)
    result = taylor("run", "--worker", "talkers.py:Talker", "-i", "word=a,b,c", "-j", "3", "--logdir", "logs",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines) == sorted(f"{w}-{i}" for w in "abc" for i in range(3))
    _contiguous(lines, ["a-", "b-", "c-"])
    assert "b-err" in result.stderr
    assert (tmp_path / "logs" / "task-0002.out").read_text() == "b-0\nb-1\nb-2\n"
    assert (tmp_path / "logs" / "task-0002.err").read_text() == "b-err\n"
    quiet = taylor("run", "--worker", "talkers.py:Talker", "-i", "word=z", "--quiet", "--logdir", "q", cwd=tmp_path)
    assert quiet.stdout == "" and (tmp_path / "q" / "task-0001.out").read_text() == "z-0\nz-1\nz-2\n"
    silent = taylor("run", "--worker", "talkers.py:Talker", "-i", "word=z", "--quiet", cwd=tmp_path)
    assert silent.returncode == 0 and silent.stdout == "" and "z-err" not in silent.stderr


def test_progress_on_a_pipe_is_plain_lines(tmp_path):
    result = taylor("run", "--progress", "echo {}", ":::", "a", "b", cwd=tmp_path)
    assert result.returncode == 0
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert "taylor: progress 2/2" in result.stderr
    assert sorted(result.stdout.split()) == ["a", "b"]


def test_progress_line_never_mixes_with_output_on_a_terminal(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    code, text = on_terminal([sys.executable, "-m", "taylor", "run", "-j", "2", "sleep 0.{}; echo out-{}", ":::",
                              *map(str, range(1, 9))], tmp_path, env)
    assert code == 0
    assert "ETA" in text  # the progress line was drawn
    outputs = [line for line in text.replace("\r\n", "\n").split("\n") if "out-" in line]
    assert len(outputs) == 8
    for line in outputs:
        # What the terminal shows of the line: after the last carriage return, and the progress line
        # erased (ESC [K) before the output is written, so nothing of it is left beside the output.
        shown = line.rsplit("\r", 1)[-1]
        assert shown.replace("\x1b[K", "") in {f"out-{i}" for i in range(1, 9)}, repr(line)


def test_a_reader_that_goes_away_stops_the_printing_not_the_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    script = (f"{sys.executable} -m taylor run -j 2 --journal j.jsonl 'seq 3; sleep 0.05 #' ::: $(seq 10) | head -1; "
              "echo \"status ${PIPESTATUS[0]}\" >&2")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout == "1\n"
    assert "status 0" in done.stderr and "Traceback" not in done.stderr and "10 done" in done.stderr


def test_a_timed_out_task_still_shows_what_it_printed(tmp_path):
    result = taylor("run", "--timeout", "0.5", "--keep-going", "echo before {}; sleep 5", ":::", "a", cwd=tmp_path)
    assert result.returncode == 1 and "timeout" in result.stderr
    assert result.stdout == "before a\n"
