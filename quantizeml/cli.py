"""The ``quantizeml`` command line.

``quantizeml demo`` trains the reference digits CNN, quantizes it at 8/8 and 4/4 bits (the
latter with a short QAT fine-tune), prints accuracies and sizes, and writes the models and
their q_config to an output folder.
"""
import argparse
import os
import sys

from .version import __version__


class CommandError(Exception):
    """An error reported as one line (no traceback unless --debug)."""


def _demo(args):
    from .demo import run_demo
    run_demo(args.output, epochs=args.epochs, qat_epochs=args.qat_epochs,
             verbose=not args.quiet)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="quantizeml",
        description="Quantization-aware training and integer deployment of tf_keras models.")
    parser.add_argument("--version", action="version", version=f"quantizeml {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train, quantize (8/8, 4/4+QAT) and save the digits CNN",
                          description="Train the reference digits CNN, quantize it at 8/8 and "
                                      "4/4 bits (with QAT), print accuracies and sizes, and "
                                      "write the models and q_configs to OUTPUT.")
    demo.add_argument("-o", "--output", default="quantizeml_demo",
                      help="output folder (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=10, help="float training epochs")
    demo.add_argument("--qat-epochs", type=int, default=3, help="QAT epochs at 4/4 bits")
    demo.add_argument("-q", "--quiet", action="store_true", help="less output")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    """Entry point of the ``quantizeml`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        args.func(args)
    except (CommandError, ValueError, TypeError, OSError) as e:
        if args.debug:
            raise
        print(f"quantizeml {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
