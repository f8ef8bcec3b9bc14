"""gunicorn's configuration (gunicorn.conf.py): workers sized from the CPUs the
process may use, a container's CPU quota included."""

import os
import runpy
from pathlib import Path

import pytest

from config.cpus import available_cpus, cgroup_cpu_limit

ROOT = Path(__file__).resolve().parents[2]


def _cgroup(tmp_path: Path, proc_lines: str, files: dict[str, str]) -> dict[str, Path]:
    """A cgroup mount and a /proc/self/cgroup made of temporary files."""
    root = tmp_path / "cgroup"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_lines)
    return {"cgroup_root": root, "proc_cgroup": proc}


class TestCgroupCpuLimit:
    def test_v2_quota_in_a_container(self, tmp_path):
        """A cgroup namespace: the process's cgroup is the mount's root."""
        paths = _cgroup(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})

        assert cgroup_cpu_limit(**paths) == 1.5

    def test_v2_without_a_quota(self, tmp_path):
        paths = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})

        assert cgroup_cpu_limit(**paths) is None

    def test_v2_the_tightest_quota_on_the_path_to_the_root_counts(self, tmp_path):
        """A systemd service in a slice: both may carry a quota."""
        paths = _cgroup(
            tmp_path,
            "0::/system.slice/usersvc.service\n",
            {
                "system.slice/cpu.max": "100000 100000\n",
                "system.slice/usersvc.service/cpu.max": "300000 100000\n",
            },
        )

        assert cgroup_cpu_limit(**paths) == 1.0

    def test_v1_quota_and_period(self, tmp_path):
        paths = _cgroup(
            tmp_path,
            "5:memory:/\n4:cpu,cpuacct:/\n0::/\n",
            {
                "cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
                "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
        )

        assert cgroup_cpu_limit(**paths) == 2.0

    def test_v1_in_a_container_whose_mount_is_its_own_cgroup(self, tmp_path):
        """Docker on cgroup v1 without a cgroup namespace: /proc/self/cgroup names the
        host's path, which does not exist under the container's mount."""
        paths = _cgroup(
            tmp_path,
            "1:cpu:/docker/0123abcd\n",
            {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"},
        )

        assert cgroup_cpu_limit(**paths) == 0.5

    def test_v1_without_a_quota(self, tmp_path):
        paths = _cgroup(
            tmp_path,
            "1:cpu:/\n",
            {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
        )

        assert cgroup_cpu_limit(**paths) is None

    @pytest.mark.parametrize(
        ("proc_lines", "files"),
        [
            ("", {}),  # no cgroups at all (not Linux, or /proc not mounted)
            ("0::/\n", {}),  # the root cgroup, which has no cpu.max
            ("0::/\n", {"cpu.max": "garbled\n"}),
        ],
    )
    def test_no_readable_quota_is_no_limit(self, tmp_path, proc_lines, files):
        assert cgroup_cpu_limit(**_cgroup(tmp_path, proc_lines, files)) is None

    def test_missing_proc_file_is_no_limit(self, tmp_path):
        assert cgroup_cpu_limit(cgroup_root=tmp_path, proc_cgroup=tmp_path / "missing") is None


class TestAvailableCpus:
    def test_a_quota_below_the_cpus_rounds_up(self, tmp_path):
        paths = _cgroup(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})

        assert available_cpus(**paths) == 1

    def test_a_quota_above_the_cpus_is_capped_by_them(self, tmp_path):
        paths = _cgroup(tmp_path, "0::/\n", {"cpu.max": "6400000 100000\n"})

        assert available_cpus(**paths) == len(os.sched_getaffinity(0))


class TestConfiguration:
    def test_workers_are_two_per_available_cpu(self, monkeypatch):
        monkeypatch.delenv("WEB_CONCURRENCY", raising=False)

        assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["workers"] == 2 * available_cpus()

    def test_web_concurrency_overrides_the_sizing(self, monkeypatch):
        monkeypatch.setenv("WEB_CONCURRENCY", "3")

        assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["workers"] == 3

    def test_loading_the_configuration_leaves_nothing_behind(self, monkeypatch):
        """gunicorn --check-config or --print-config loads it without starting: the
        metrics folder is made when the server starts, not when the file is read."""
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))

        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
