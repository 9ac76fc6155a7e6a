#!/usr/bin/env python3
"""The lean exact ONNX form (issue 21 point 2): the exact exporter of a base commit ("before")
against the working tree's ("after"), in one process, on the same quantized models.

Usage::

    python3 benchmarks/export_speed.py                       # 4 architectures
    python3 benchmarks/export_speed.py --only digits_cnn --output /tmp/e.json
    python3 benchmarks/export_speed.py --before /tmp/exp_before   # the base checkout

``--before`` is a checkout of the base commit (``git worktree add /tmp/exp_before <commit>``):
its ``quantizeml/onnx_support`` package is loaded as ``quantizeml._onnx_before`` (its relative
imports resolve to this tree's layers and tensors, so both exporters read the same quantized
model). Per architecture (``digits_cnn`` untrained, ``MobileNetV2`` alpha 0.35, ``ResNet50``,
``MobileNet`` alpha 0.25 at 96x96, ``tf_keras.applications``, ``weights=None``, seeded,
quantized at 8/8 on 32 uniform [-1, 1] samples, as ``deployment.py`` builds them) and per
exporter: ``nodes`` (by op type), ``export_s``, ``bit_exact`` (``integer_outputs`` equal the
Keras integers and the float outputs the Keras ones on 32 inputs), ``onnx_s`` (onnxruntime
default CPU session, batch 32, median of ``--repeats`` after a warm-up, the two exporters'
sessions and the float model timed in turn, the order rotating, 0.2 s of pause before each
call), ``float_tf_s`` (the float model under ``tf.function``) and ``ratio`` (``onnx_s /
float_tf_s``).
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

ARCHITECTURES = ("digits_cnn", "MobileNetV2", "ResNet50", "MobileNet")


def _load_before(checkout):
    """The base checkout's exporter as the package ``quantizeml._onnx_before``."""
    import quantizeml
    path = os.path.join(checkout, "quantizeml", "onnx_support")
    spec = importlib.util.spec_from_file_location(
        "quantizeml._onnx_before", os.path.join(path, "__init__.py"),
        submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    quantizeml._onnx_before = module
    return sys.modules["quantizeml._onnx_before.export"].export


#: Seconds of pause before each timed call: onnxruntime's intra-op threads spin for a while
#: after a run, and on a few cores they would slow down whichever call comes next.
PAUSE_S = 0.2


def _alternate_times(fns, repeats, pause=PAUSE_S):
    """Median seconds of each function, called in turn (one warm-up each), each call after a
    pause of ``pause`` seconds; the order rotates from one repeat to the next (on a loaded
    machine the first call of a round tends to be the fastest)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for repeat in range(repeats):
        for step in range(len(fns)):
            i = (repeat + step) % len(fns)
            time.sleep(pause)
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def measure(name, exporters, repeats):
    import numpy as np
    import tensorflow as tf
    import deployment
    from quantizeml.models import quantize

    model, x_calib, x_eval = deployment.build(name, quick=name == "digits_cnn")
    qmodel = quantize(model, samples=x_calib, batch_size=len(x_calib))
    values, _ = deployment._keras_integers(qmodel, x_eval)
    expected = np.asarray(qmodel(x_eval))
    result = {"architecture": name, "input_shape": list(x_eval.shape[1:]), "batch": len(x_eval)}
    runs = []
    for label, export in exporters:
        start = time.perf_counter()
        proto = export(qmodel)
        export_s = time.perf_counter() - start
        session = deployment._session(proto)
        feed = {session.get_inputs()[0].name: x_eval}
        outputs = session.run(None, feed)
        exact = bool(np.array_equal(outputs[1], values.astype(np.int64))
                     and np.array_equal(outputs[0], expected))
        ops = Counter(node.op_type for node in proto.graph.node)
        result[label] = {"nodes": len(proto.graph.node), "ops": dict(ops.most_common()),
                         "export_s": round(export_s, 3), "bit_exact": exact}
        runs.append(lambda s=session, f=feed: s.run(None, f))
    fn = tf.function(lambda x: model(x, training=False))
    x_tf = tf.constant(x_eval)
    runs.append(lambda: fn(x_tf).numpy())
    times = _alternate_times(runs, repeats)
    result["float_tf_s"] = round(times[-1], 5)
    for (label, _), t in zip(exporters, times):
        result[label]["onnx_s"] = round(t, 5)
        result[label]["ratio"] = round(t / times[-1], 2)
    return result


def format_table(rows):
    lines = ["| model | nodes before → after | bit-exact | ONNX / float TF before → after |",
             "| --- | --- | --- | --- |"]
    for r in rows:
        b, a = r.get("before"), r["after"]
        nodes = f"{b['nodes']} → {a['nodes']}" if b else str(a["nodes"])
        ratio = f"{b['ratio']}× → {a['ratio']}×" if b else f"{a['ratio']}×"
        exact = f"{b['bit_exact']} / {a['bit_exact']}" if b else str(a["bit_exact"])
        lines.append(f"| {r['architecture']} | {nodes} | {exact} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(ARCHITECTURES))
    parser.add_argument("--before", default=None, help="checkout of the base commit")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(HERE, "export_speed.json"))
    args = parser.parse_args(argv)
    from quantizeml.onnx_support.export import export
    exporters = [("after", export)]
    if args.before:
        exporters.insert(0, ("before", _load_before(args.before)))
    rows = []
    for name in args.only:
        rows.append(measure(name, exporters, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    with open(args.output, "w") as f:
        json.dump({"batch": 32, "repeats": args.repeats, "results": rows}, f, indent=1)
    print(format_table(rows))


if __name__ == "__main__":
    main()
