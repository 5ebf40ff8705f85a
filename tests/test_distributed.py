"""Scale-out: `torchrun -m genctl train` with two CPU processes on the gloo backend, and the
bucketed gradient average of genctl.distributed against one process on the whole batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp
import yaml
from torch import nn

from genctl import checkpoint
from genctl.distributed import BucketReducer, Distributed
from genctl.tracking import local_path, search_runs

RECIPE = {
    "name": "ddp-dcgan",
    "plugin": "dcgan",
    "model": {"latent_dim": 8, "g_width": 4, "d_width": 4},
    "data": {"kind": "shapes", "image_size": 8, "size": 64},
    "train": {
        "steps": 4,
        "batch_size": 4,
        "log_every": 2,
        "sample_every": 4,
        "checkpoint_every": 2,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(workdir, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENCTL_PLUGINS": "dcgan"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "genctl",
        "train",
        *args,
        "--no-progress",
    ]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_train_one_run_and_resume(workdir):
    (workdir / "ddp.yaml").write_text(yaml.safe_dump(RECIPE))
    res = _torchrun(workdir, "ddp.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = search_runs()
    assert len(runs) == 1  # rank 0 alone records
    run = runs[0]
    assert run.status == "FINISHED" and run.params["train.steps"] == "4"
    final = checkpoint.load(local_path(run.artifact_uri) / checkpoint.FINAL)
    assert final["step"] == 4

    res = _torchrun(workdir, "--resume", run.run_id, "train.steps=6")
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r.run_id for r in search_runs()] == [run.run_id]  # the same run continued
    assert checkpoint.load(local_path(run.artifact_uri) / checkpoint.FINAL)["step"] == 6


# ---------------------------------------------------------------- bucketed reduce == large batch


def _gan_pair() -> dict[str, nn.Module]:
    """A tiny generator and discriminator without batch norm, the same on every rank."""
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 5))
    d = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 1))
    return {"g": g, "d": d}


def _gan_updates(nets, batches, groups, reduce, accumulate=2, steps=3) -> None:
    """A GAN's updates as the trainer makes them: per group, only its weights need gradients,
    ``accumulate`` micro-batches per update, ``reduce(group)`` around the last backward."""
    from contextlib import nullcontext

    # SGD: the step is the gradient itself (Adam would hide a wrong scale)
    opts = {k: torch.optim.SGD(n.parameters(), lr=0.2) for k, n in nets.items()}
    for step in range(steps):
        for group in ("d", "g", "d"):
            for k, n in nets.items():
                n.requires_grad_(k == group)
            for p in nets[group].parameters():
                p.grad = None
            for i in range(accumulate):
                real, z = batches[(step, group, i)]
                with reduce(group) if i == accumulate - 1 else nullcontext():
                    if group == "d":
                        with torch.no_grad():
                            fake = nets["g"](z)
                        loss = nn.functional.softplus(nets["d"](fake)).mean()
                        loss = loss + nn.functional.softplus(-nets["d"](real)).mean()
                    else:  # the discriminator runs frozen, as in every GAN's generator step
                        loss = nn.functional.softplus(-nets["d"](nets["g"](z))).mean()
                    (loss / accumulate).backward()
            opts[group].step()


def _batches(shard: slice):
    gen = torch.Generator().manual_seed(1)
    out = {}
    for step in range(3):
        for group in ("d", "g", "d2"):
            for i in range(2):
                out[(step, group[0], i)] = (
                    torch.randn(8, 5, generator=gen)[shard],
                    torch.randn(8, 3, generator=gen)[shard],
                )
    return out


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    nets = _gan_pair()
    group_params = {k: list(n.parameters()) for k, n in nets.items()}
    ranks = Distributed(rank, 2, torch.device("cpu"))
    os.environ["GENCTL_BUCKET_MB"] = str(100 / 2**20)  # ~100 bytes: several buckets per network
    ranks.watch(group_params)
    assert all(len(r.buckets) >= 2 for r in ranks._reducers.values())
    _gan_updates(nets, _batches(slice(rank * 4, rank * 4 + 4)), group_params, ranks.reducing)
    if rank == 0:
        torch.save({k: n.state_dict() for k, n in nets.items()}, out)
    ranks.close()


def test_bucketed_reduce_gives_the_weights_of_one_process_on_the_whole_batch(tmp_path):
    """Two gloo ranks on half the batch each, gradients averaged in several buckets during the
    backward, with requires_grad switched per group and accumulation: the weights one process
    gets from the whole batch (the ranks' losses are means over equal halves)."""
    out = tmp_path / "ranks.pt"
    mp.start_processes(_rank, args=(_free_port(), str(out)), nprocs=2, start_method="spawn")
    ranks = torch.load(out)

    nets = _gan_pair()
    from contextlib import nullcontext

    _gan_updates(nets, _batches(slice(0, 8)), None, lambda group: nullcontext())
    alone = {k: n.state_dict() for k, n in nets.items()}
    start = _gan_pair()
    for k in alone:
        for name, w in alone[k].items():
            assert not torch.equal(w, start[k].state_dict()[name])  # the updates moved it
            torch.testing.assert_close(ranks[k][name], w, rtol=1e-5, atol=1e-6)


def test_buckets_follow_the_backward_and_respect_the_size():
    params = [nn.Parameter(torch.zeros(n)) for n in (10, 20, 30, 40)]
    reducer = BucketReducer(params, world=2, bucket_bytes=150)  # 37 floats and a bit
    ids = [[id(p) for p in b.params] for b in reducer.buckets]
    # reverse order (backward meets the last layers first); a bucket closes once it is full
    assert ids == [[id(params[3])], [id(params[2]), id(params[1])], [id(params[0])]]
    reducer.remove()
