"""The ``quantizeml`` command line.

Subcommands:

* ``quantizeml demo``: trains the reference digits CNN, quantizes it at 8/8 and 4/4 bits (the
  latter with a short QAT fine-tune), prints accuracies and sizes, and writes the models and
  their q_config to an output folder;
* ``quantizeml quantize MODEL -o OUT``: sanitizes and quantizes a Keras model file;
* ``quantizeml check MODEL``: prints the quantization issues of a quantized model;
* ``quantizeml config MODEL``: prints the q_config of a quantized model as JSON;
* ``quantizeml analyze MODEL QMODEL --samples data.npz``: per-layer SQNR, errors, saturation
  (``--sensitivity [BITS]``: each layer's sensitivity to fewer weight bits);
* ``quantizeml export-onnx QMODEL -o out.onnx``: exports a quantized model to ONNX.

Errors are reported as one line on stderr (exit code 1; 2 for a bad command line), with the
traceback only under ``--debug``. Progress goes to stderr: stage lines, and on a terminal a
progress bar (``quantizeml.progress``); in a pipe no bar characters, on stdout nothing but the
command's result.

TensorFlow's logs stay off the terminal unless asked for (``--debug``, or ``TF_CPP_MIN_LOG_LEVEL``
set by the user): :func:`main` sets ``TF_CPP_MIN_LOG_LEVEL=3`` when unset and silences the
Python-side TensorFlow, absl and Keras warnings while the command runs. The console script starts
in ``quantizeml_launcher`` (beside the package), which does the same before the package, and so
TensorFlow, is first imported, and keeps TensorFlow's start-up lines off file descriptor 2. This
module imports no TensorFlow at module level.
"""
import argparse
import contextlib
import json
import logging
import os
import sys
import warnings

from .version import __version__


class CommandError(Exception):
    """An error reported as one line (no traceback unless --debug)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser reporting usage errors as one line (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _demo(args):
    from .demo import run_demo
    run_demo(args.output, epochs=args.epochs, qat_epochs=args.qat_epochs,
             verbose=not args.quiet)


def _log(args, msg, bar=None):
    """Prints a progress line on stderr (above the bar, if any), unless --quiet."""
    if getattr(args, "quiet", False):
        return
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, file=sys.stderr, flush=True)


def _progress(args, steps, label):
    """A progress bar over a command's steps: on stderr when it is a terminal, and not --quiet."""
    from .progress import ProgressBar
    return ProgressBar(steps, label, enabled=None if not getattr(args, "quiet", False) else False,
                       tick=0.5)


@contextlib.contextmanager
def _library_progress(bar):
    """Runs a library call with its own (Keras) progress bar where ``bar`` draws (a terminal).

    Yields the ``verbose`` value to pass: True on a terminal, with stdout sent to stderr so that
    the Keras bar never lands in the command's output; False elsewhere.
    """
    if not bar.enabled:
        yield False
        return
    with bar.hidden(), contextlib.redirect_stdout(sys.stderr):
        yield True


def _load_model(path, what="MODEL", quantized=False):
    """Loads a Keras model file (h5, .keras or SavedModel directory), or raises CommandError.

    With ``quantized=True`` the model must hold quantizeml layers.
    """
    if not os.path.exists(path):
        raise CommandError(f"{what} {path!r}: no such file or directory")
    import tf_keras as keras
    from .models import load_model
    try:
        model = load_model(path, compile_model=False)
    except Exception as e:  # noqa: BLE001 - any failure means "not a Keras model"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CommandError(f"{what} {path!r} is not a Keras model ({first})") from e
    if not isinstance(model, keras.Model):
        raise CommandError(f"{what} {path!r} is not a Keras model (loaded a "
                           f"{type(model).__name__})")
    if quantized and not any(type(layer).__module__.startswith("quantizeml.")
                             for layer in model.layers):
        raise CommandError(f"{what} {path!r} is not a quantized model (run 'quantizeml "
                           "quantize' first)")
    return model


def _load_samples(path):
    """The first array of an npz file (or the array of an npy file), as float32."""
    if not os.path.exists(path):
        raise CommandError(f"--samples {path!r}: no such file or directory")
    import numpy as np
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise CommandError(f"--samples {path!r} is not an npz/npy file ({e})") from e
    if isinstance(data, np.ndarray):
        return data.astype(np.float32)
    with data:
        if not data.files:
            raise CommandError(f"--samples {path!r} holds no array")
        return data[data.files[0]].astype(np.float32)


def _load_json(path):
    if not os.path.exists(path):
        raise CommandError(f"--config {path!r}: no such file or directory")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CommandError(f"--config {path!r} is not valid JSON ({e})") from e


def _quantize(args):
    from .models import QuantizationParams, quantize
    from .models.transforms import sanitize
    model = _load_model(args.model)
    samples = _load_samples(args.samples) if args.samples else None
    q_config = _load_json(args.config) if args.config else None
    qparams = QuantizationParams(
        activation_bits=args.activation_bits, weight_bits=args.weight_bits,
        output_bits=args.output_bits or args.activation_bits,
        input_weight_bits=args.input_weight_bits or args.weight_bits,
        per_tensor_activations=args.per_tensor_activations)
    with _progress(args, 3, "quantize") as bar:
        bar.update(0, "sanitizing")
        _log(args, f"Sanitizing {model.name!r}...", bar)
        model = sanitize(model)
        num = len(samples) if samples is not None else args.num_samples
        bar.update(1, "quantizing and calibrating")
        _log(args, f"Quantizing (weights {qparams.weight_bits} bits, activations "
                   f"{qparams.activation_bits} bits) and calibrating on {num} "
                   f"{'samples' if samples is not None else 'random samples'}...", bar)
        with _library_progress(bar) as verbose:
            qmodel = quantize(model, q_config=q_config, qparams=qparams, samples=samples,
                              num_samples=num, verbose=verbose,
                              float_fallback=args.float_fallback)
        bar.update(1, "saving")
        out_dir = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(out_dir, exist_ok=True)
        qmodel.save(args.output)
        bar.update(1, "done")
    _log(args, f"Quantized model saved to {args.output}")


def _check(args):
    from .models import check_quantization
    model = _load_model(args.model, quantized=True)
    samples = _load_samples(args.samples) if args.samples else None
    issues = check_quantization(model, samples=samples)
    for issue in issues:
        print(issue)
    if not issues:
        print("no issue found")


def _config(args):
    from .models import dump_config
    model = _load_model(args.model, quantized=True)
    print(json.dumps(dump_config(model), indent=2))


def _analyze(args):
    from .analysis import compare, format_table, plot
    model = _load_model(args.model)
    qmodel = _load_model(args.qmodel, "QMODEL", quantized=True)
    samples = _load_samples(args.samples)
    from .models.transforms import sanitize
    sensitivity = None
    bits = args.sensitivity or (4 if args.sensitivity_plot else None)
    with _progress(args, 3 if bits else 2, "analyze") as bar:
        bar.update(0, "sanitizing")
        model = sanitize(model)
        bar.update(1, f"comparing on {len(samples)} samples")
        _log(args, f"Comparing {model.name!r} and {qmodel.name!r} layer by layer on "
                   f"{len(samples)} samples...", bar)
        with _library_progress(bar) as verbose:
            table = compare(model, qmodel, samples, verbose=verbose)
        if bits:
            from .models import dump_config, layer_sensitivity
            bar.update(1, f"sensitivity at {bits} bits")
            _log(args, f"Re-quantizing with one layer's weights at {bits} bits at a time "
                       f"(sensitivity)...", bar)
            sensitivity = layer_sensitivity(model, samples, low_bits=bits,
                                            q_config=dump_config(qmodel))
        bar.update(1, "done")
    print(format_table(table), flush=True)
    if sensitivity is not None:
        from .analysis import format_sensitivity, plot_sensitivity
        print(f"\nSensitivity: output SQNR with only that layer's weights on {bits} bits "
              f"(the others as in QMODEL), most sensitive first", flush=True)
        print(format_sensitivity(sensitivity), flush=True)
        if args.sensitivity_plot:
            try:
                plot_sensitivity(sensitivity, args.sensitivity_plot)
            except ImportError as e:
                raise CommandError(str(e)) from e
            _log(args, f"Sensitivity plot saved to {args.sensitivity_plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
    if args.plot:
        try:
            plot(table, args.plot)
        except ImportError as e:
            raise CommandError(str(e)) from e
        _log(args, f"Plot saved to {args.plot}")


def _export_onnx(args):
    samples = _load_samples(args.samples) if args.samples else None
    qmodel = _load_model(args.qmodel, "QMODEL", quantized=True)
    try:
        from .onnx_support.export import export
    except ImportError as e:
        raise CommandError(f"ONNX export is not available in this installation ({e})") from e
    with _progress(args, 1, "export-onnx") as bar:
        bar.update(0, f"exporting {qmodel.name!r} ({args.format} form)")
        proto = export(qmodel, args.output, format=args.format)
        bar.update(1, "done")
    _log(args, f"ONNX model saved to {args.output}")
    import onnx
    print(f"format: {args.format}")
    print(f"nodes: {len(proto.graph.node)}")
    try:
        onnx.checker.check_model(proto, full_check=True)
        print("check_model(full_check=True): passed")
    except onnx.checker.ValidationError as e:
        print(f"check_model(full_check=True): failed: {str(e).strip().splitlines()[0]}")
    if samples is not None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise CommandError(f"--samples needs onnxruntime ({e})") from e
        import numpy as np
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: samples})
        expected = qmodel.predict(samples, batch_size=32, verbose=0)
        expected = expected if isinstance(expected, (list, tuple)) else [expected]
        diff = max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(e, np.float64))))
                   for g, e in zip(got, expected))
        print(f"max |ONNX - Keras| on {len(samples)} samples: {diff:.6g}")


QUIET_LOG_LEVEL = "3"   # TF_CPP_MIN_LOG_LEVEL: no INFO, WARNING or ERROR line from TF's C++


@contextlib.contextmanager
def _quiet_libraries(debug):
    """Silences the TensorFlow/absl/Keras chatter while a command runs (not under --debug).

    Python warnings (legacy-h5, deprecations) are ignored and the ``tensorflow`` and ``absl``
    loggers (e.g. "compiled metrics have yet to be built") show errors only; all of it is
    restored on exit, so that ``main()`` called in a process leaves it as it was.
    """
    if debug:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def build_parser():
    parser = _Parser(
        prog="quantizeml", allow_abbrev=False,   # --debug is also read before parsing
        description="Quantization-aware training and integer deployment of tf_keras models.")
    parser.add_argument("--version", action="version", version=f"quantizeml {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks on errors, and TensorFlow's logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser("demo", help="train, quantize (8/8, 4/4+QAT) and save the digits CNN",
                          description="Train the reference digits CNN, quantize it at 8/8 and "
                                      "4/4 bits (with QAT), print accuracies and sizes, and "
                                      "write the models and q_configs to OUTPUT.")
    demo.add_argument("-o", "--output", default="quantizeml_demo",
                      help="output folder (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=10, help="float training epochs")
    demo.add_argument("--qat-epochs", type=int, default=3, help="QAT epochs at 4/4 bits")
    demo.add_argument("-q", "--quiet", action="store_true",
                      help="no progress and no table (the results are in OUTPUT/results.json)")
    demo.set_defaults(func=_demo)

    quant = sub.add_parser(
        "quantize", help="sanitize, quantize and calibrate a Keras model file",
        description="Load a float Keras model (h5, .keras or SavedModel), sanitize it, "
                    "quantize it and calibrate it on SAMPLES (random samples when absent), "
                    "then save the quantized model to OUTPUT (.h5 for an h5 file, else a "
                    "SavedModel directory).")
    quant.add_argument("model", metavar="MODEL", help="float Keras model file")
    quant.add_argument("-o", "--output", required=True, help="quantized model file")
    quant.add_argument("--weight-bits", type=int, default=8, metavar="N",
                       help="weights bitwidth (default: %(default)s)")
    quant.add_argument("--activation-bits", type=int, default=8, metavar="N",
                       help="activations bitwidth (default: %(default)s)")
    quant.add_argument("--output-bits", type=int, default=None, metavar="N",
                       help="bitwidth of signed block outputs (default: --activation-bits)")
    quant.add_argument("--input-weight-bits", type=int, default=None, metavar="N",
                       help="weights bitwidth of the first layer (default: --weight-bits)")
    quant.add_argument("--per-tensor-activations", action="store_true",
                       help="quantize activations per tensor (default: per axis)")
    quant.add_argument("--config", metavar="Q.JSON",
                       help="q_config JSON (layer name -> quant_config, as 'quantizeml "
                            "config' prints); its entries win over the bit options")
    quant.add_argument("--samples", metavar="DATA.NPZ",
                       help="calibration samples: the first array of an npz (or an npy) file")
    quant.add_argument("--num-samples", type=int, default=1024, metavar="N",
                       help="number of random calibration samples without --samples "
                            "(default: %(default)s)")
    quant.add_argument("--float-fallback", action="store_true",
                       help="keep every layer that cannot be quantized float (float islands) "
                            "instead of stopping with the list of them")
    quant.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    quant.set_defaults(func=_quantize)

    check = sub.add_parser(
        "check", help="print the quantization issues of a quantized model",
        description="Print the issues found by check_quantization (inaccurate weight scales, "
                    "saturation), one per line, or 'no issue found'.")
    check.add_argument("model", metavar="MODEL", help="quantized Keras model file")
    check.add_argument("--samples", metavar="DATA.NPZ",
                       help="samples to observe saturation on (first array of an npz file)")
    check.set_defaults(func=_check)

    config = sub.add_parser(
        "config", help="print the q_config of a quantized model as JSON",
        description="Print the q_config (layer name -> quant_config) of a quantized model as "
                    "JSON; 'quantizeml quantize --config' takes it back.")
    config.add_argument("model", metavar="MODEL", help="quantized Keras model file")
    config.set_defaults(func=_config)

    analyze = sub.add_parser(
        "analyze", help="per-layer SQNR, errors and saturation of a quantized model",
        description="Compare a float model and its quantized twin on samples, layer by "
                    "layer: SQNR (dB), max absolute error, OutputQuantizer saturation and "
                    "weight quantization error; print the table, optionally plot it.")
    analyze.add_argument("model", metavar="MODEL", help="float Keras model file")
    analyze.add_argument("qmodel", metavar="QMODEL", help="quantized Keras model file")
    analyze.add_argument("--samples", metavar="DATA.NPZ", required=True,
                         help="samples (first array of an npz file)")
    analyze.add_argument("--plot", metavar="OUT.PNG",
                         help="save a bar chart of the SQNR per layer (needs matplotlib)")
    analyze.add_argument("--json", metavar="OUT.JSON", help="save the table as JSON")
    analyze.add_argument("--sensitivity", type=int, nargs="?", const=4, default=None,
                         metavar="BITS",
                         help="also print each layer's sensitivity: the output SQNR when only "
                              "its weights go to BITS bits (default 4), the others as in "
                              "QMODEL (re-quantizes and calibrates once per layer)")
    analyze.add_argument("--sensitivity-plot", metavar="OUT.PNG",
                         help="save a bar chart of the sensitivity (implies --sensitivity)")
    analyze.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    analyze.set_defaults(func=_analyze)

    export = sub.add_parser(
        "export-onnx", help="export a quantized Keras model to ONNX",
        description="Export a quantized Keras model to an ONNX model file.")
    export.add_argument("qmodel", metavar="QMODEL", help="quantized Keras model file")
    export.add_argument("-o", "--output", required=True, help="ONNX model file")
    export.add_argument("--format", choices=("exact", "qdq"), default="exact",
                        help="'exact': integer ONNX equal to the Keras model bit for bit "
                             "(default); 'qdq': QuantizeLinear/DequantizeLinear around float "
                             "operators, fused into int8 kernels by onnxruntime (within one "
                             "output step)")
    export.add_argument("--samples", metavar="DATA.NPZ",
                        help="samples (first array of an npz, or an npy file) to print the "
                             "max difference of the ONNX outputs against the Keras model on")
    export.set_defaults(func=_export_onnx)
    return parser


def main(argv=None):
    """Entry point of the ``quantizeml`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not args.debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LOG_LEVEL)
    try:
        with _quiet_libraries(args.debug):
            args.func(args)
    except Exception as e:  # noqa: BLE001 - one line, the traceback under --debug
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"quantizeml {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"quantizeml {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
