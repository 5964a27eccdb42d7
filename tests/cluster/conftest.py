"""Fixtures for the cluster tests: a real one-node Slurm started for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .slurm_cluster import SlurmCluster, missing_tools, running_slurm


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages slurm-wlm and munge; scripts/setup.sh)")
    with running_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
