"""The backfill on a simulated two-node cluster (``ray.cluster_utils.Cluster``): the same job, the
same table."""

from __future__ import annotations

import pytest
import ray

from backfill.job import BackfillOptions, run_backfill, service_args
from backfill.table import read_table
from integration.test_backfill import tree

pytestmark = pytest.mark.integration


def test_a_two_node_cluster_runs_the_same_job(tiny_clip_dir, tmp_path):
    args = service_args({"model": tiny_clip_dir, "dtype": "float32", "engine": "torch", "forward_lanes": 1})
    from ray.cluster_utils import Cluster

    expected = tree(tmp_path / "images")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        run_backfill(BackfillOptions(str(tmp_path / "images"), str(tmp_path / "out"), actors=1,
                                     cpus_per_actor=1.5, progress=False), args)
        rows = read_table(str(tmp_path / "out"), "parquet").to_pylist()
        assert sorted(r["source"] for r in rows) == sorted(expected)
        assert {r["source"]: r["error_code"] for r in rows} == expected
    finally:
        ray.shutdown()
        cluster.shutdown()
