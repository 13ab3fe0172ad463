"""Real Slurm jobs on a real (local) cluster: the sharding job array + merge, and a 2-node job's environment.

The cluster comes from ``slurm_fixtures.slurm_cluster``: started with slurm/local/start_local_slurm.sh when the
tests run as root and no cluster answers, skipped otherwise (never skipped with CI=true). Every wait has a timeout
and a failure prints the job's records, its output files and the daemons' logs.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

from data_fixtures import index_of
from slurm_fixtures import REPO, SlurmCluster

from data_prep.shards import ShardConfig, write_shards

PREP_SBATCH = REPO / "slurm" / "prep_shards.sbatch"
SHARD_CONFIG = ShardConfig(shard_max_samples=2, valid_fraction=0.3)
EXTRA_ARGS = "--shard-max-samples 2 --valid-fraction 0.3"     # the same options, for the CLI in the job


def test_prep_shards_job_array_then_merge_equals_a_single_run(slurm_cluster: SlurmCluster,
                                                             synth_corpus, tmp_path: Path):
    """slurm/prep_shards.sbatch as a real 2-task job array, then the merge job (afterok on the array): the merged
    index equals the index of one local write_shards run over the same corpus."""
    t0 = time.monotonic()
    out, work = tmp_path / "out", tmp_path / "work"
    # Slurm opens the --output file before the script runs, so its folder must exist at submission
    # (the script's own "mkdir -p logs" comes too late for the first run).
    (work / "logs").mkdir(parents=True)
    export = {"OUT": str(out), "INPUTS": str(synth_corpus["dir"]), "MGEN": f"{sys.executable} -m data_prep.cli",
              "PYTHONPATH": str(REPO), "EXTRA_ARGS": EXTRA_ARGS}
    # The script's header asks for 16 tasks x 8 CPUs x 16 GB for 4 h; the command line overrides it to fit the
    # local cluster. --output is absolute so the logs are found wherever the job ran.
    small = ["--cpus-per-task=1", "--mem=512M", "--time=5", f"--chdir={work}",
             f"--output={work}/logs/%x-%A_%a.out"]

    array_id = slurm_cluster.sbatch(*small, "--array=0-1", PREP_SBATCH, export=export)
    merge_id = slurm_cluster.sbatch(*small, "--array=0", f"--dependency=afterok:{array_id}", PREP_SBATCH,
                                    export=dict(export, MERGE="1"))

    tasks = slurm_cluster.wait(array_id, timeout=90, expect_tasks=2)
    slurm_cluster.assert_completed(array_id, tasks)
    assert sorted(r["ArrayTaskId"] for r in tasks) == ["0", "1"], slurm_cluster.diagnostics(array_id)
    # Each task wrote its own slice (a partial index) before the merge ran.
    partials = sorted(p.name for p in out.glob("shards.task-*.json"))
    assert partials == ["shards.task-0000.json", "shards.task-0001.json"], slurm_cluster.diagnostics(array_id)
    t_array = time.monotonic() - t0

    merge = slurm_cluster.wait(merge_id, timeout=60)
    slurm_cluster.assert_completed(merge_id, merge)
    # afterok: the merge started only after both array tasks ended (StartTime/EndTime are ISO strings).
    assert min(r["StartTime"] for r in merge) >= max(r["EndTime"] for r in tasks), (
        slurm_cluster.diagnostics(merge_id))
    t_merge = time.monotonic() - t0

    reference = tmp_path / "reference"
    write_shards(synth_corpus["dir"], reference, SHARD_CONFIG, workers=1, progress=False)
    merged = index_of(out)
    assert merged["totals"]["samples"] > 0 and len(merged["shards"]) >= 2
    assert merged == index_of(reference), slurm_cluster.diagnostics(merge_id)
    print(f"\n[slurm] array done after {t_array:.1f} s, merge after {t_merge:.1f} s, "
          f"reference + compare {time.monotonic() - t0 - t_merge:.1f} s")


def test_two_node_job_reaches_every_task(slurm_cluster: SlurmCluster, tmp_path: Path):
    """--nodes=2 --ntasks-per-node=1 with srun: every task sees its own SLURM_NODEID / SLURM_PROCID / node name,
    the node list is the job's, and the first node's name resolves (Lightning uses it as MASTER_ADDR)."""
    slurm_cluster.require(nodes=2)
    t0 = time.monotonic()
    results = tmp_path / "tasks"
    results.mkdir()
    # Each task writes one JSON file (no interleaved stdout); the venv's python proves PATH/venv reach the tasks.
    probe = textwrap.dedent(f"""
        import json, os, socket, subprocess
        env = {{k: v for k, v in os.environ.items() if k.startswith("SLURM")}}
        hosts = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True, check=True).stdout.split()
        env["hostnames"] = hosts
        env["master_addr"] = socket.gethostbyname(hosts[0])
        with open(os.path.join({str(results)!r}, "task-" + env["SLURM_PROCID"] + ".json"), "w") as f:
            json.dump(env, f)
    """)
    (tmp_path / "probe.py").write_text(probe)
    script = tmp_path / "two_nodes.sbatch"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --job-name=mgen-two-nodes
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=1
        #SBATCH --cpus-per-task=1
        #SBATCH --mem=256M
        #SBATCH --time=2
        set -euo pipefail
        echo "batch shell on $(hostname) as $SLURMD_NODENAME, nodes $SLURM_JOB_NODELIST"
        srun {sys.executable} {tmp_path / 'probe.py'}
        """))
    job_id = slurm_cluster.sbatch(f"--chdir={tmp_path}", f"--output={tmp_path}/%x-%j.out", script)
    records = slurm_cluster.wait(job_id, timeout=60)
    slurm_cluster.assert_completed(job_id, records)

    files = sorted(results.glob("task-*.json"))
    assert len(files) == 2, f"expected 2 task files, got {files}\n{slurm_cluster.diagnostics(job_id)}"
    tasks = [json.loads(f.read_text()) for f in files]
    hosts = tasks[0]["hostnames"]
    assert len(hosts) == 2 and len(set(hosts)) == 2
    assert records[0]["NodeList"] == tasks[0]["SLURM_JOB_NODELIST"]
    for task in tasks:
        assert task["SLURM_JOB_ID"] == job_id
        assert task["SLURM_NNODES"] == "2" and task["SLURM_NTASKS"] == "2" and task["SLURM_LOCALID"] == "0"
        node_id, proc_id = int(task["SLURM_NODEID"]), int(task["SLURM_PROCID"])
        # Block distribution with one task per node: rank i runs on the i-th node of the list.
        assert node_id == proc_id
        assert task["SLURMD_NODENAME"] == hosts[node_id]
        assert task["SLURM_STEP_NODELIST"] == task["SLURM_JOB_NODELIST"]
        assert task["hostnames"] == hosts
        assert task["master_addr"]                  # the first node's name resolves (a hosts entry locally)
    assert sorted(int(t["SLURM_PROCID"]) for t in tasks) == [0, 1]
    assert sorted(t["SLURMD_NODENAME"] for t in tasks) == sorted(hosts)
    print(f"\n[slurm] 2-node job done in {time.monotonic() - t0:.1f} s on {hosts}")
