"""DistributedDataParallel on two gloo processes: the ranks agree, and equal one process with the same batch."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from minimagen import distributed
from minimagen.train import list_checkpoints

from test_train import make_trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_rank(rank, world, port, out_dir, steps, text):
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ranks = distributed.Ranks(rank, world)
    distributed.start(ranks, timeout_s=60)
    try:
        trainer = make_trainer(out_dir, steps=steps, text=text, parallel=ranks)
        trainer.fit(progress=False)
        torch.save({"model": trainer.model.state_dict(), "history": trainer.history}, out_dir / f"rank{rank}.pt")
    finally:
        distributed.stop()


@pytest.mark.parametrize("text", [False, True])
def test_two_gloo_processes_agree_and_equal_one_process_with_the_same_batch(tmp_path, text):
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_run_rank, args=(2, _free_port(), out, 3, text), nprocs=2, join=True)
    a, b = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    for x, y in zip(a["model"].values(), b["model"].values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)  # DDP: every rank holds the same weights

    single = make_trainer(tmp_path / "one", steps=3, text=text)
    single.fit(progress=False)
    for x, y in zip(single.model.state_dict().values(), a["model"].values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)  # only the order of float sums differs
    # Each rank's logged loss is the mean over its half of the batch: their mean is the one-process loss.
    for (step, l0), (_, l1), (_, l) in zip(a["history"], b["history"], single.history):
        assert (l0 + l1) / 2 == pytest.approx(l, rel=1e-4, abs=1e-6)

    # Only rank 0 wrote checkpoints; a one-process run resumes from them and goes on like a run that never
    # stopped (the random draws are those of the whole batch, whatever the number of processes).
    assert [p.name for p in list_checkpoints(out)] == ["step_00000003.safetensors"]
    resumed = make_trainer(out, steps=5, text=text)
    assert resumed.resume() and resumed.step == 3
    resumed.fit(progress=False)
    straight = make_trainer(tmp_path / "straight", steps=5, text=text)
    straight.fit(progress=False)
    for x, y in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_ranks_split_the_batch_and_refuse_what_does_not_divide():
    assert [distributed.Ranks(r, 4).local(8) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6),
                                                                    slice(6, 8)]
    with pytest.raises(ValueError, match="multiple of the number of processes 3"):
        distributed.Ranks(0, 3).local(8)
    with pytest.raises(ValueError, match="rank must be in"):
        distributed.Ranks(2, 2)
    assert distributed.from_environment({}) is None
    assert distributed.from_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == distributed.Ranks(1, 2, 1)
    with pytest.raises(ValueError, match="malformed"):
        distributed.from_environment({"RANK": "x", "WORLD_SIZE": "2"})


def test_torchrun_runs_the_train_command_on_two_processes(tmp_path):
    import subprocess
    import sys

    def torchrun(*args):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(_free_port()), "-m", "minimagen", "train", "--out", str(tmp_path / "run"), "--unet", "base-s",
                   "--image-size", "16", "--steps", "2", "--threads", "1", "--quiet", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    done = torchrun("--batch-size", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("on 2 processes (2 images each per step)") == 1  # rank 0 alone prints
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000002.safetensors"]
    refused = torchrun("--batch-size", "3")
    assert refused.returncode != 0
    assert "minimagen train: error: batch_size 3 must be a multiple of the number of processes 2" in refused.stderr


def test_killing_one_process_stops_the_run_and_leaves_a_checkpoint_that_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from minimagen.checkpoint import TrainingState

    out = tmp_path / "run"

    def command(steps):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "minimagen", "train", "--out", str(out), "--unet", "base-s", "--image-size",
                "16", "--batch-size", "4", "--steps", str(steps), "--checkpoint-every", "2", "--threads", "1",
                "--quiet"]

    launcher = subprocess.Popen(command(100_000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(out) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert list_checkpoints(out), "no checkpoint within 2 minutes"
        workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        subprocess.run(["kill", "-KILL", workers[-1]])
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGKILL)
    assert launcher.returncode != 0
    assert "Signal 9 (SIGKILL)" in stderr or "exitcode  : -9" in stderr  # torchrun names the process that died
    last = list_checkpoints(out)[-1]
    step = int(TrainingState(last).meta["step"])  # whole: rank 0 writes checkpoints atomically
    assert step >= 2
    resumed = subprocess.run(command(step + 2), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {out} at step {step}" in resumed.stdout
