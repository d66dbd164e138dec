"""Data-parallel training over MPI (juanji.distributed, Sequential.distribute): each test launches
``mpirun -np 2`` on this machine and checks what each rank reports (a JSON file per rank). Skipped
where mpirun is absent or juanji was built without MPI; the checks of a world of one process run
everywhere."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import juanji
from juanji import distributed

MPIRUN = shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(MPIRUN is None or not distributed.compiled(),
                               reason="needs mpirun and juanji built with MPI")

# Open MPI refuses to run as root (CI does) without these, and with -np above the cores it
# counts (a 1-core runner) without oversubscription allowed.
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMP_NUM_THREADS": "1"}

COMMON = """
import json, os, sys
import numpy as np
import juanji
from juanji import distributed, nn, optim

def model():
    juanji.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))

def data(steps, batch):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((batch, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, batch))
            for _ in range(steps)]

def state(m):
    return {p.name: p.data.ravel().tolist() for p in m.parameters()}

def report(**record):
    with open(os.path.join(os.environ["JUANJI_TEST_OUT"], f"rank{record['rank']}.json"), "w") as f:
        json.dump(record, f)
"""


def run_script(tmp_path, script, np_ranks=2, timeout=60, definitions=""):
    """Runs the script, after COMMON and definitions, on np_ranks ranks (0: one process without
    mpirun); each rank's report() lands in tmp_path/rank<r>.json."""
    code = COMMON + definitions + textwrap.dedent(script)
    env = dict(os.environ, **MPI_ENV, JUANJI_TEST_OUT=str(tmp_path))
    command = [sys.executable, "-c", code]
    if np_ranks:
        command = [MPIRUN, "-np", str(np_ranks), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def reports(result, tmp_path):
    """What each rank reported, by rank."""
    assert result.returncode == 0, result.stdout + result.stderr
    out = {}
    for path in tmp_path.glob("rank*.json"):
        record = json.loads(path.read_text())
        out[record["rank"]] = record
        path.unlink()
    return out


def test_a_world_of_one_without_a_launcher(tmp_path):
    result = run_script(tmp_path, """
        distributed.init()
        a = np.arange(4, dtype=np.float32)
        distributed.all_reduce(a, op="mean")
        distributed.broadcast(a)
        m = model().distribute(bucket_mib=0.001)
        opt = optim.SGD(m.parameters(), lr=0.1)
        for x, y in data(2, 4):
            m.train_step(x, y, nn.CrossEntropyLoss(), opt)
        report(**{"rank": distributed.rank(), "size": distributed.world_size(),
                  "a": a.tolist(), "distributed": m.is_distributed})
    """, np_ranks=0)
    assert reports(result, tmp_path)[0] == {"rank": 0, "size": 1, "a": [0, 1, 2, 3], "distributed": True}


def test_synchronized_batch_norm_in_a_world_of_one_is_the_plain_one_and_survives_a_checkpoint(tmp_path):
    from juanji import nn, optim

    def trained(sync):
        juanji.manual_seed(1)
        m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, sync=sync), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(27, 2))
        rng = np.random.default_rng(0)
        opt = optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            m.train_step(rng.standard_normal((5, 1, 8, 8)).astype(np.float32), rng.integers(0, 2, 5),
                         nn.CrossEntropyLoss(), opt)
        return m

    synced, plain = trained(True), trained(False)
    for name, value in plain.state_dict().items():
        np.testing.assert_array_equal(synced.state_dict()[name], value, err_msg=name)
    norm = synced[1]
    assert norm.sync and not plain[1].sync
    assert repr(norm) == "BatchNorm2d(3, eps=1e-05, momentum=0.1, sync=True)"
    assert repr(plain[1]) == "BatchNorm2d(3, eps=1e-05, momentum=0.1)"
    synced.save(tmp_path / "m.safetensors")
    assert juanji.load(tmp_path / "m.safetensors")[1].sync
    norm.sync = False
    assert "sync" not in repr(norm)


@pytest.mark.skipif(distributed.compiled(), reason="for a juanji built without MPI")
def test_without_mpi_init_refuses_a_launch_of_several_ranks(tmp_path):
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2")
    result = subprocess.run([sys.executable, "-c", "from juanji import distributed; distributed.init()"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert "built without MPI" in result.stderr


def test_show_config_names_mpi():
    text = juanji.config_string()
    assert "mpi:" in text
    assert ("compiled yes" in text) == distributed.compiled()


@needs_mpi
def test_all_reduce_and_broadcast_on_arrays_and_tensors(tmp_path):
    result = run_script(tmp_path, """
        distributed.init()
        r = distributed.rank()
        a = np.full(5, r + 1, dtype=np.float64)
        distributed.all_reduce(a)
        b = np.full((2, 3), float(r), dtype=np.float32)
        distributed.all_reduce(b, op="mean")
        t = juanji.tensor(np.full(3, 10.0 * r, dtype=np.float32))
        distributed.broadcast(t, root=1)
        u = juanji.tensor(np.full(2, r + 1.0, dtype=np.float32))
        distributed.all_reduce(u)
        distributed.barrier()
        report(**{"rank": r, "size": distributed.world_size(), "a": a.tolist(),
                  "b": b.ravel().tolist(), "t": t.numpy().tolist(), "u": u.numpy().tolist()})
    """)
    ranks = reports(result, tmp_path)
    assert sorted(ranks) == [0, 1]
    for r in (0, 1):
        assert ranks[r]["size"] == 2
        assert ranks[r]["a"] == [3.0] * 5
        assert ranks[r]["b"] == [0.5] * 6
        assert ranks[r]["t"] == [10.0] * 3
        assert ranks[r]["u"] == [3.0] * 2


@needs_mpi
def test_two_ranks_with_half_batches_match_one_rank_identically_on_both_and_run_to_run(tmp_path):
    steps, batch = 4, 8
    single = run_script(tmp_path, f"""
        m = model()
        opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for x, y in data({steps}, {batch}):
            m.train_step(x, y, nn.CrossEntropyLoss(), opt)
        report(**{{"rank": 0, "state": state(m)}})
    """, np_ranks=0)
    one = reports(single, tmp_path)[0]["state"]
    double_script = f"""
        distributed.init()
        r = distributed.rank()
        m = model()
        if r == 1:  # different initial values: distribute() copies rank 0's
            for p in m.parameters():
                p.data = p.data + 1
        m.distribute(bucket_mib=0.0005)  # several buckets
        opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        half = {batch} // 2
        for x, y in data({steps}, {batch}):
            m.train_step(x[r * half:(r + 1) * half], y[r * half:(r + 1) * half], nn.CrossEntropyLoss(), opt)
        report(**{{"rank": r, "state": state(m)}})
    """
    double = run_script(tmp_path, double_script)
    ranks = reports(double, tmp_path)
    assert ranks[0]["state"] == ranks[1]["state"]  # bit-identical on both ranks
    again = reports(run_script(tmp_path, double_script), tmp_path)
    assert again[0]["state"] == ranks[0]["state"]  # and run to run
    for name, values in one.items():
        np.testing.assert_allclose(ranks[0]["state"][name], values, rtol=1e-5, atol=1e-6, err_msg=name)


BATCH_NORM_MODEL = """
def norm_model(sync):
    juanji.manual_seed(5)
    block = nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, sync=sync)))
    # conv + norm + ReLU + max pooling (one fused pass each way), a residual block, and a biased
    # conv + norm (the norm's backward gives the conv its bias gradient)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, sync=sync), nn.ReLU(),
                         nn.MaxPool2d(2), block, nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4, sync=sync), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))

def norm_state(m):
    return {name: t.ravel().tolist() for name, t in m.state_dict().items()}
"""


@needs_mpi
@pytest.mark.parametrize("sync", [True, False])
def test_synchronized_batch_norm_makes_two_half_batches_one_batch(tmp_path, sync):
    steps, batch = 4, 8
    single = run_script(tmp_path, f"""
        m = norm_model(False)
        opt = optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        for x, y in data({steps}, {batch}):
            m.train_step(x, y, nn.CrossEntropyLoss(), opt)
        report(**{{"rank": 0, "state": norm_state(m)}})
    """, np_ranks=0, definitions=BATCH_NORM_MODEL)
    one = reports(single, tmp_path)[0]["state"]
    double = run_script(tmp_path, f"""
        distributed.init()
        r = distributed.rank()
        m = norm_model({sync})
        m.distribute(bucket_mib=0.001)
        opt = optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        half = {batch} // 2
        for x, y in data({steps}, {batch}):
            m.train_step(x[r * half:(r + 1) * half], y[r * half:(r + 1) * half], nn.CrossEntropyLoss(), opt)
        report(**{{"rank": r, "state": norm_state(m)}})
    """, definitions=BATCH_NORM_MODEL)
    ranks = reports(double, tmp_path)
    if sync:
        # every parameter and running statistic is the one-batch run's, on both ranks
        assert ranks[0]["state"].keys() == one.keys()
        for r in (0, 1):
            for name, values in one.items():
                np.testing.assert_allclose(ranks[r]["state"][name], values, rtol=2e-5, atol=2e-6,
                                           err_msg=f"rank {r}: {name}")
    else:
        # per-rank statistics: the same model trains to other values (what sync=True is for)
        differs = [name for name, values in one.items()
                   if not np.allclose(ranks[0]["state"][name], values, rtol=2e-5, atol=2e-6)]
        assert differs


@needs_mpi
def test_init_adopts_the_mpi_that_mpi4py_started(tmp_path):
    pytest.importorskip("mpi4py")
    result = run_script(tmp_path, """
        from mpi4py import MPI  # starts MPI (thread level 'multiple' by default)
        distributed.init()
        a = np.array([float(MPI.COMM_WORLD.Get_rank())])
        distributed.all_reduce(a)
        report(**{"rank": distributed.rank(), "mpi4py_rank": MPI.COMM_WORLD.Get_rank(), "a": a.tolist()})
    """)
    ranks = reports(result, tmp_path)
    assert [ranks[r]["mpi4py_rank"] for r in (0, 1)] == [0, 1]
    assert ranks[0]["a"] == ranks[1]["a"] == [1.0]


@needs_mpi
def test_distribute_refuses_models_that_differ_between_ranks(tmp_path):
    result = run_script(tmp_path, """
        distributed.init()
        r = distributed.rank()
        m = model() if r == 0 else nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        try:
            m.distribute()
        except ValueError as e:
            report(**{"rank": r, "error": str(e)})
    """)
    ranks = reports(result, tmp_path)
    assert "differ between ranks" in ranks[0]["error"]
    assert "this rank (1) has" in ranks[1]["error"]


@needs_mpi
def test_an_exception_on_one_rank_ends_the_job_promptly(tmp_path):
    start = time.monotonic()
    result = run_script(tmp_path, """
        distributed.init()
        if distributed.rank() == 1:
            raise RuntimeError("bad data on rank 1")
        distributed.barrier()  # rank 0 would wait here for ever
        print("rank 0 passed the barrier")
    """, timeout=30)
    assert result.returncode != 0
    assert "bad data on rank 1" in result.stderr
    assert time.monotonic() - start < 20


@needs_mpi
def test_a_killed_rank_ends_the_job_promptly(tmp_path):
    start = time.monotonic()
    result = run_script(tmp_path, """
        import signal
        distributed.init()
        m = model().distribute()
        opt = optim.SGD(m.parameters(), lr=0.1)
        for step, (x, y) in enumerate(data(1000, 4)):
            if step == 3 and distributed.rank() == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # rank 0 is left waiting in the gradients' sum
            m.train_step(x, y, nn.CrossEntropyLoss(), opt)
        print("rank", distributed.rank(), "finished")
    """, timeout=60)
    assert result.returncode != 0
    assert "finished" not in result.stdout
    assert time.monotonic() - start < 20


SUBSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "fashion-mnist-subset")


def run_cli(*argv, timeout=120):
    env = dict(os.environ, **MPI_ENV)
    return subprocess.run([MPIRUN, "-np", "2", sys.executable, "-m", "juanji", *argv],
                          capture_output=True, text=True, timeout=timeout, env=env)


@needs_mpi
def test_cli_trains_on_two_ranks_and_only_rank_0_prints_and_writes(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--model", "lenet5", "--data", SUBSET_DIR, "--epochs", "1", "--limit", "100",
                     "--batch-size", "16", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("epoch 1/1: train loss") == 1
    assert ("data-parallel on 2 MPI ranks: batch 16 per rank, global batch 32, batch-norm statistics per rank"
            in result.stdout)
    log = json.loads((out / "log.json").read_text())
    assert (log["world_size"], log["global_batch_size"]) == (2, 32)
    assert log["steps_per_epoch"] == 4  # 100 images in global batches of 32
    assert len(log["step_losses"]) == 4
    assert (out / "model.safetensors").is_file()


@needs_mpi
def test_cli_synchronizes_batch_norm_and_augments_per_rank_on_request(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--model", "convnet", "--data", SUBSET_DIR, "--epochs", "1", "--limit", "64",
                     "--batch-size", "16", "--sync-batch-norm", "--augment", "crop,flip", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "batch-norm statistics synchronized" in result.stdout
    log = json.loads((out / "log.json").read_text())
    assert len(log["step_losses"]) == log["steps_per_epoch"] == 2  # each rank's loader made its slices
    norms = [m for m in juanji.load(out / "model.safetensors").modules() if isinstance(m, juanji.nn.BatchNorm2d)]
    assert norms and all(m.sync for m in norms)


@needs_mpi
def test_cli_error_on_rank_0_ends_the_job(tmp_path):
    (tmp_path / "file").write_text("")
    start = time.monotonic()
    result = run_cli("train", "--model", "lenet5", "--data", SUBSET_DIR, "--epochs", "1", "--limit", "64",
                     "--out", str(tmp_path / "file" / "run"), timeout=30)
    assert result.returncode != 0
    assert "juanji train: error:" in result.stderr
    assert time.monotonic() - start < 20
