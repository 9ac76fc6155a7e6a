"""tf.distribute.MultiWorkerMirroredStrategy: QAT fine-tuning of the quantized digits CNN by
two worker processes on 127.0.0.1 (the README recipe, tests/multiworker_worker.py).

The test saves the float model and the data once; both workers load them, quantize inside the
strategy scope, train one epoch on their DATA shard of the same global batches and save their
weights. The two workers must end bit-identical, equal to a single-process run (the same
recipe with the default strategy, in the test process) within float tolerance, and worker 0's
saved model must reload with bit-identical outputs.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models import load_model
from quantizeml.models.transforms import sanitize
from quantizeml.models.zoo import digits_cnn, load_digits_data
from tests.multiworker_worker import GLOBAL_BATCH, finetune, weights_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiworker_worker.py")
NUM_WORKERS, NUM_SAMPLES, TIMEOUT_S = 2, 256, 240
# Worker weights against the single-process ones: |difference| <= ATOL + RTOL * |weight|.
# Measured: at most 1.5e-8 (one float32 ulp of the weights), while the epoch moves every
# weight tensor by 5e-4 to 8e-4.
ATOL, RTOL = 1e-5, 1e-4


def _free_ports(count):
    """Ports free on 127.0.0.1 (bound to port 0, then released for the workers)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _prepare(workdir):
    """The float model (briefly trained, fixed seed) and the data every run uses."""
    x_train, y_train, x_test, _ = load_digits_data()
    x, y = x_train[:NUM_SAMPLES], y_train[:NUM_SAMPLES]
    keras.utils.set_random_seed(0)
    model = digits_cnn()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
    model.save(os.path.join(workdir, "float.h5"))
    np.savez(os.path.join(workdir, "data.npz"), x=x, y=y, x_fixed=x_test[:64])
    keras.backend.clear_session()


def _start_workers(workdir):
    ports = _free_ports(NUM_WORKERS)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(NUM_WORKERS):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})}
        log = open(os.path.join(workdir, f"worker_{index}.log"), "w")
        try:
            procs.append(subprocess.Popen([sys.executable, WORKER, workdir], env=env, cwd=ROOT,
                                          stdout=log, stderr=subprocess.STDOUT))
        finally:
            log.close()
    return procs


def _logs(workdir):
    text = []
    for index in range(NUM_WORKERS):
        with open(os.path.join(workdir, f"worker_{index}.log")) as f:
            text.append(f"--- worker {index} ---\n" + f.read()[-3000:])
    return "\n".join(text)


def _wait(procs, workdir, deadline):
    """Waits for every worker; fails at once when one fails (the others would wait for it)."""
    while any(p.poll() is None for p in procs):
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed:
            pytest.fail(f"worker(s) {failed} failed:\n{_logs(workdir)}")
        if time.monotonic() > deadline:
            pytest.fail(f"workers still running after {TIMEOUT_S} s:\n{_logs(workdir)}")
        time.sleep(0.2)
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        pytest.fail(f"worker(s) {failed} failed:\n{_logs(workdir)}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("multiworker"))
    _prepare(workdir)
    deadline = time.monotonic() + TIMEOUT_S
    procs = _start_workers(workdir)
    try:
        # the single-process reference, while the workers run
        qmodel, loss = finetune(tf.distribute.get_strategy(), workdir)
        single = {**weights_dict(qmodel), "loss": np.array(loss)}
        keras.backend.clear_session()
        _wait(procs, workdir, deadline)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    workers = [dict(np.load(os.path.join(workdir, f"weights_{i}.npz")))
               for i in range(NUM_WORKERS)]
    return {"workdir": workdir, "single": single, "workers": workers}


@pytest.mark.slow
def test_workers_end_bit_identical(runs):
    first, second = runs["workers"]
    assert int(first["replicas"]) == NUM_WORKERS
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.mark.slow
def test_workers_match_single_process(runs):
    worker, single = runs["workers"][0], runs["single"]
    assert sorted(k for k in worker if k != "replicas") == sorted(single)
    np.testing.assert_allclose(worker["loss"], single["loss"], rtol=1e-4)
    for name in single:
        np.testing.assert_allclose(worker[name], single[name], rtol=RTOL, atol=ATOL,
                                   err_msg=name)
    # not vacuous: training moved the weights (quantize() copies the float kernels) far more
    # than the tolerance
    float_model = sanitize(keras.models.load_model(
        os.path.join(runs["workdir"], "float.h5"), compile=False))
    trained = {name.split("_", 1)[1]: value for name, value in worker.items() if "_" in name}
    for v in float_model.weights:
        assert np.max(np.abs(trained[v.name] - v.numpy())) > 10 * ATOL, v.name


@pytest.mark.slow
def test_worker_0_model_reloads_bit_exact(runs):
    workdir = runs["workdir"]
    qmodel = load_model(os.path.join(workdir, "qmodel.h5"))
    x_fixed = np.load(os.path.join(workdir, "data.npz"))["x_fixed"]
    expected = np.load(os.path.join(workdir, "outputs_0.npy"))
    np.testing.assert_array_equal(qmodel(x_fixed, training=False).numpy(), expected)
    reloaded = weights_dict(qmodel)
    for name, value in reloaded.items():
        np.testing.assert_array_equal(value, runs["workers"][0][name], err_msg=name)
