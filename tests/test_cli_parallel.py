"""Issue 13, parts 2 to 4: values as written, GNU parallel's input and placeholders, -j forms, retries,
halting, dry runs and empty input, through the real ``taylor`` command."""

from __future__ import annotations

import json
import shutil

import pytest
from test_cli import journal_lines, taylor

PARALLEL = shutil.which("parallel")

TYPED = '''
from taylor import Worker


class Typed(Worker):
    _footprint = dict(attr=dict(
        count=dict(type=int), ratio=dict(type=float), flag=dict(type=bool), label=dict(),
    ))

    def _task(self):
        extra = self._attributes.get("extra")
        return [self.count, self.ratio, self.flag, self.label, extra]
'''


def _gnu(*args, input=None):
    import subprocess

    return subprocess.run([PARALLEL, "--will-cite", *args], capture_output=True, text=True, input=input,
                          timeout=30).stdout


# ------------------------------------------------------------ values as written
def test_command_values_are_the_text_as_written(tmp_path):
    (tmp_path / "cells.csv").write_text("a,b,c,d\n1.10,true,null,-0\n")
    result = taylor("run", "--command", "echo {a} {b} {c} {d} {f}", "--from", "cells.csv", "-c", "f=1e3",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1.10 true null -0 1e3\n"
    given = taylor("run", "--command", "echo {v}", "-i", "v=007,1.50", "-k", cwd=tmp_path)
    assert given.stdout.split() == ["007", "1.50"]


def test_json_and_yaml_values_appear_as_json_text(tmp_path):
    (tmp_path / "rows.json").write_text('[{"a": true, "b": null, "c": 1.10, "d": "x y", "e": {"k": 1}}]')
    result = taylor("run", "--command", "printf '%s|' {a} {b} {c} {d} {e}", "--from", "rows.json", cwd=tmp_path)
    assert result.stdout == 'true|null|1.10|x y|{"k":1}|'
    pytest.importorskip("yaml")
    (tmp_path / "rows.yaml").write_text("- {a: true, b: null, c: 1.10, d: -0}\n")
    yaml = taylor("run", "--command", "printf '%s|' {a} {b} {c} {d}", "--from", "rows.yaml", cwd=tmp_path)
    assert yaml.stdout == "true|null|1.10|-0|"


def test_worker_values_convert_by_the_declared_types(tmp_path):
    (tmp_path / "typed.py").write_text(TYPED)
    result = taylor("run", "--worker", "typed.py:Typed", "-c", "count=3", "-c", "ratio=1e3", "-i", "flag=false,true",
                    "-c", "label=1.10", "-c", "extra=2.50", "--report", "-", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reports = sorted(entry["report"] for entry in json.loads(result.stdout)["workers_report"])
    # Declared types convert (bool by the word, not Python's bool("false")); undeclared text stays text.
    assert reports == [[3, 1000.0, False, "1.10", "2.50"], [3, 1000.0, True, "1.10", "2.50"]]
    wrong = taylor("run", "--worker", "typed.py:Typed", "-c", "count=3", "-c", "ratio=1", "-c", "label=x",
                   "-i", "flag=maybe", cwd=tmp_path)
    assert wrong.returncode == 2 and "flag" in wrong.stderr


def test_numeric_format_spec_reads_text_as_a_number(tmp_path):
    result = taylor("run", "-k", "echo {1:03d}", ":::", "7", "12", cwd=tmp_path)
    assert result.stdout.split() == ["007", "012"]


# --------------------------------------------------------- input, placeholders
def test_groups_cross_product_pairs_and_files(tmp_path):
    (tmp_path / "list.txt").write_text("p\nq\n")
    cases = [
        ("echo", ":::", "a", "b", ":::", "1", "2"),
        ("echo {2} {1}", ":::", "a", "b", ":::", "1", "2"),
        ("echo", ":::", "a", "b", ":::+", "1", "2"),
        ("echo {}", "::::", "list.txt", ":::", "x"),
    ]
    expected = [["a 1", "a 2", "b 1", "b 2"], ["1 a", "2 a", "1 b", "2 b"], ["a 1", "b 2"], ["p x", "q x"]]
    for case, want in zip(cases, expected):
        result = taylor("run", "-k", *case, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == want, case
        if PARALLEL:
            import subprocess

            gnu = subprocess.run([PARALLEL, "--will-cite", "-k", *case], capture_output=True, text=True,
                                 cwd=tmp_path, timeout=30).stdout
            assert gnu.splitlines() == want, ("GNU parallel", case)


def test_replacement_strings_and_modifiers(tmp_path):
    lines = "dir/sub/file.tar.gz\nplain\n/abs/x.txt\n"
    template = "echo {} {.} {/} {//} {/.} {#}"
    result = taylor("run", "-k", template, cwd=tmp_path, input=lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["dir/sub/file.tar.gz dir/sub/file.tar file.tar.gz dir/sub file.tar 1",
                                          "plain plain plain . plain 2", "/abs/x.txt /abs/x x.txt /abs x 3"]
    if PARALLEL:
        assert _gnu("-k", template, input=lines) == result.stdout
    named = taylor("run", "--command", "echo {f/.} {f//} {f.}", "-i", "f=a/b.c", cwd=tmp_path)
    assert named.stdout == "b a a/b\n"
    # {} and --tag are the task's input values, not what -c gives every task; -c tail=N still sets the tails.
    common = taylor("run", "--tag", "-c", "x=1", "-c", "tail=1", "echo {x} {}", ":::", "a", cwd=tmp_path)
    assert common.returncode == 0, common.stderr
    assert common.stdout == "a\t1 a\n"


def test_from_stdin_is_one_value_per_line_unless_told(tmp_path):
    # A piped ls keeps its first line (it is no CSV header).
    result = taylor("run", "-k", "--from", "-", "--command", "echo got {}", cwd=tmp_path, input="first\nsecond\n")
    assert result.stdout.splitlines() == ["got first", "got second"]
    (tmp_path / "names.list").write_text("x.txt\n")
    listed = taylor("run", "--from", "names.list", "--command", "echo {1}", cwd=tmp_path)
    assert listed.stdout == "x.txt\n"
    csv = taylor("run", "-k", "--from", "-", "--csv", "--command", "echo {a}", cwd=tmp_path, input="a\n1\n2\n")
    assert csv.stdout.split() == ["1", "2"]
    jsonl = taylor("run", "--from", "-", "--jsonl", "--command", "echo {a}", cwd=tmp_path, input='{"a": 1.50}\n')
    assert jsonl.stdout == "1.50\n"


def test_slot_numbers_and_job_count_forms(tmp_path):
    from taylor.schedulers.host import usable_cpus

    cpus = usable_cpus()
    for spec, jobs in (("2", 2), ("+1", cpus + 1), ("-1", max(1, cpus - 1)), ("50%", max(1, cpus // 2)),
                       ("100%", cpus)):
        result = taylor("run", "-j", spec, "sleep 0.4; echo {%}", ":::", *map(str, range(jobs + 1)), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        slots = {int(s) for s in result.stdout.split()}
        assert slots == set(range(1, jobs + 1)), (spec, slots)
    bad = taylor("run", "-j", "lots", "true", ":::", "a", cwd=tmp_path)
    assert bad.returncode == 2 and "-j" in bad.stderr


# ------------------------------------------------------- retries and halting
def test_retries_run_a_failed_task_again_and_count_attempts(tmp_path):
    # Fails on its first two attempts, then succeeds.
    flaky = "n=$(cat {}.n 2>/dev/null || echo 0); echo $((n+1)) > {}.n; echo try $n; test $n -ge 2"
    result = taylor("run", "--retries", "2", "--journal", "j.jsonl", "--report", "r.json", flaky, ":::", "a",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "try 2\n"  # the output of the last attempt only
    attempts = [(line["attempt"], line["status"], line.get("retried", False))
                for line in journal_lines(tmp_path / "j.jsonl")]
    assert attempts == [(1, "failed", True), (2, "failed", True), (3, "done", False)]
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(e["name"], e["status"], e["attempts"]) for e in report["workers_report"]] == [("task-0001", "done", 3)]
    short = taylor("run", "--retries", "1", "--journal", "k.jsonl", "exit 1", ":::", "b", cwd=tmp_path)
    assert short.returncode == 1 and "after 2 attempts" in short.stderr


def test_resume_knows_the_attempts(tmp_path):
    args = ("run", "--retries", "1", "--journal", "j.jsonl", "--keep-going", "--report", "r.json")
    command = ("test -e ok-{}", ":::", "a", "b")  # options go before the command, as in GNU parallel
    (tmp_path / "ok-a").touch()
    first = taylor(*args, *command, cwd=tmp_path)
    assert first.returncode == 1
    assert [line["attempt"] for line in journal_lines(tmp_path / "j.jsonl") if line["name"] == "task-0002"] == [1, 2]
    (tmp_path / "ok-b").touch()
    second = taylor(*args, "--resume", *command, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    entry = json.loads((tmp_path / "r.json").read_text())["workers_report"][0]
    assert entry["name"] == "task-0002" and entry["attempts"] == 3


def test_halt_now_terminates_running_tasks_soon_lets_them_finish(tmp_path):
    tasks = ("fail", "slow", "later")
    command = "case {} in fail) sleep 0.2; exit 1;; slow) sleep 1.5; touch {}.finished;; *) touch {}.started;; esac"
    now = taylor("run", "-j", "2", "--halt", "now,fail=1", command, ":::", *tasks, cwd=tmp_path)
    assert now.returncode == 1
    assert not (tmp_path / "slow.finished").exists() and not (tmp_path / "later.started").exists()
    soon = taylor("run", "-j", "2", "--halt", "soon,fail=1", command, ":::", *tasks, cwd=tmp_path)
    assert soon.returncode == 1
    assert (tmp_path / "slow.finished").exists() and not (tmp_path / "later.started").exists()
    assert "halted as --halt soon,fail=1" in soon.stderr
    going = taylor("run", "-j", "2", "--keep-going", command, ":::", *tasks, cwd=tmp_path)
    assert going.returncode == 1 and (tmp_path / "later.started").exists()


def test_halt_on_counts_percentages_and_success(tmp_path):
    fails = taylor("run", "-j", "1", "--halt", "soon,fail=2", "--report", "r.json", "exit 1", ":::",
                   *"abcde", cwd=tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    assert fails.returncode == 1 and len(report["workers_report"]) == 2 and len(report["pending"]) == 3
    percent = taylor("run", "-j", "1", "--halt", "soon,fail=50%", "--report", "p.json", "exit 1", ":::",
                     *"abcdefgh", cwd=tmp_path)
    # GNU parallel judges a percentage once 3 tasks ended: 3 of 8 failed is not 50%, 4 of 8 is.
    assert percent.returncode == 1 and len(json.loads((tmp_path / "p.json").read_text())["workers_report"]) == 4
    success = taylor("run", "-j", "1", "--halt", "now,success=1", "echo {}; test {} = b", ":::", "a", "b", "c",
                     cwd=tmp_path)
    assert success.returncode == 0, success.stderr  # halted on success, as asked: not a failure
    assert success.stdout.split() == ["a", "b"]
    bad = taylor("run", "--halt", "later,fail=1", "true", ":::", "a", cwd=tmp_path)
    assert bad.returncode == 2 and "--halt" in bad.stderr


def test_dry_run_prints_commands_after_resume_and_runs_nothing(tmp_path):
    dry = taylor("run", "--dry-run", "-k", "touch {}", ":::", "a b", "c", cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.splitlines() == ["touch 'a b'", "touch c"]
    assert not list(tmp_path.glob("a*")) and not (tmp_path / "c").exists()
    taylor("run", "--journal", "j.jsonl", "--keep-going", "test {} = c", ":::", "a", "c", cwd=tmp_path)
    resumed = taylor("run", "--dry-run", "--journal", "j.jsonl", "--resume", "test {} = c", ":::", "a", "c",
                     cwd=tmp_path)
    assert resumed.returncode == 0 and resumed.stdout.splitlines() == ["test a = c"]


def test_empty_input_warns_and_exits_0(tmp_path):
    (tmp_path / "none.txt").write_text("")
    for args, stdin in ((("--from", "none.txt", "--command", "echo {}"), None), (("echo",), "")):
        result = taylor("run", *args, cwd=tmp_path, input=stdin)
        assert result.returncode == 0, result.stderr
        assert "warning" in result.stderr and "empty" in result.stderr and result.stdout == ""
