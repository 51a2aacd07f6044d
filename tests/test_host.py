"""Host discovery with faked affinity, cgroup files and batch-system variables."""

from __future__ import annotations

import pytest

from taylor.schedulers import host

GIB = 1 << 30


def fake_root(tmp_path, cgroup_lines, files):
    """A directory standing for / : proc/self/cgroup and files under sys/fs/cgroup."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("\n".join(cgroup_lines) + "\n")
    for relative, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return str(tmp_path)


def cpus(root, environ=None, affinity=range(16)):
    return min(host.cpu_limits(root, environ or {}, affinity))


def mem(root, environ=None, total=64 * 1024.0, affinity=range(16)):
    return min(host.memory_limits(root, environ or {}, total, affinity), key=lambda limit: limit[0])


def test_affinity_alone_when_nothing_else_limits(tmp_path):
    root = fake_root(tmp_path, ["0::/"], {"cpu.max": "max 100000", "memory.max": "max"})
    assert cpus(root, affinity=[2, 3, 5]) == (3, "CPU affinity of this process")
    assert mem(root) == (64 * 1024.0, "total memory of the host (psutil)")


def test_cgroup_v2_quota_and_memory_limit_of_the_job_cgroup(tmp_path):
    root = fake_root(tmp_path, ["0::/job/step"], {
        "job/step/cpu.max": "max 100000",
        "job/cpu.max": "250000 100000",  # an ancestor's limit applies too: 2.5 CPUs -> 3
        "job/step/memory.max": str(4 * GIB),
    })
    n, source = cpus(root)
    assert n == 3 and "cpu.max" in source and "job" in source
    assert mem(root)[0] == 4096.0 and "memory.max" in mem(root)[1]


def test_cgroup_v1_quota_and_memory_limit(tmp_path):
    root = fake_root(tmp_path, ["4:memory:/slurm/job1", "3:cpu,cpuacct:/slurm/job1"], {
        "cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "400000",
        "cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "100000",
        "memory/slurm/job1/memory.limit_in_bytes": str(2 * GIB),
        "memory/memory.limit_in_bytes": str(9223372036854771712),  # v1's "no limit"
    })
    assert cpus(root)[0] == 4
    assert mem(root) == (2048.0, f"cgroup memory limit ({root}/sys/fs/cgroup/memory/slurm/job1/"
                                 "memory.limit_in_bytes)")


def test_v1_quota_of_minus_one_is_no_limit_and_container_paths_fall_back_to_the_mount(tmp_path):
    root = fake_root(tmp_path, ["3:cpu:/docker/abc"], {"cpu/cpu.cfs_quota_us": "-1",
                                                       "cpu/cpu.cfs_period_us": "100000"})
    assert host.cgroup_dirs("cpu", root) == [f"{root}/sys/fs/cgroup/cpu"]
    assert cpus(root, affinity=range(6))[0] == 6
    root2 = fake_root(tmp_path / "b", ["3:cpu:/docker/abc"], {"cpu/cpu.cfs_quota_us": "100000",
                                                              "cpu/cpu.cfs_period_us": "100000"})
    assert cpus(root2)[0] == 1


@pytest.mark.parametrize("environ, expected", [
    ({"SLURM_CPUS_PER_TASK": "4"}, (4, "Slurm SLURM_CPUS_PER_TASK=4")),
    ({"NCPUS": "6"}, (6, "PBS/Torque NCPUS=6")),
    ({"PBS_NUM_PPN": "5"}, (5, "PBS/Torque PBS_NUM_PPN=5")),
    ({"LSB_DJOB_NUMPROC": "3"}, (3, "LSF LSB_DJOB_NUMPROC=3")),
    ({"NSLOTS": "2", "SLURM_CPUS_PER_TASK": "8"}, (2, "Grid Engine NSLOTS=2")),
    ({"SLURM_CPUS_PER_TASK": "garbage"}, (16, "CPU affinity of this process")),
    ({"SLURM_CPUS_PER_TASK": "64"}, (16, "CPU affinity of this process")),
])
def test_batch_system_cpu_counts_cap_the_affinity(tmp_path, environ, expected):
    root = fake_root(tmp_path, ["0::/"], {})
    assert cpus(root, environ) == expected


def test_slurm_memory_allocations_cap_the_total(tmp_path):
    root = fake_root(tmp_path, ["0::/"], {})
    assert mem(root, {"SLURM_MEM_PER_NODE": "8000"}) == (8000.0, "Slurm SLURM_MEM_PER_NODE=8000")
    assert mem(root, {"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_PER_TASK": "3"}) == (
        3000.0, "Slurm SLURM_MEM_PER_CPU=1000 x 3 CPUs")
    assert mem(root, {"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "5"})[0] == 5000.0


def test_usable_figures_and_describe_take_the_smallest_limit(tmp_path):
    root = fake_root(tmp_path, ["0::/"], {"memory.max": str(1 * GIB)})
    environ = {"SLURM_CPUS_PER_TASK": "1", "SLURM_MEM_PER_NODE": "100000"}
    assert host.usable_cpus(root, environ) == 1
    assert host.usable_memory(root, environ) == min(1024.0, host.memory_limits(root, {})[0][0])
    figures = host.describe(root, environ)
    assert figures["cpus"] == (1, "Slurm SLURM_CPUS_PER_TASK=1")
    assert isinstance(figures["memory_mib"][0], float) and isinstance(figures["memory_mib"][1], str)
    assert figures["available_mib"][0] <= 1024.0


def test_available_memory_is_capped_by_the_room_left_in_the_cgroup(tmp_path):
    root = fake_root(tmp_path, ["0::/job"], {"job/memory.max": str(3 * GIB),
                                             "job/memory.current": str(2 * GIB)})
    assert host.available_memory(root) <= 1024.0
    assert host.available_memory(str(tmp_path / "nothing")) > 0


def test_real_host_figures_are_sane():
    figures = host.describe()
    assert 1 <= figures["cpus"][0] <= len(host.all_cpus())
    assert 0 < figures["memory_mib"][0]
    assert host.usable_cpus() == figures["cpus"][0]
