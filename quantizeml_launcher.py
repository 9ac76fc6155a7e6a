"""The ``quantizeml`` console script: silences TensorFlow's start-up logs, then runs the CLI.

``import quantizeml`` imports TensorFlow, and TensorFlow prints start-up lines to file
descriptor 2 while it is imported (oneDNN, CUDA stubs and factory registrations, CPU features,
"WARNING: All log messages before absl::InitializeLog() is called ..."), several of them before
it reads ``TF_CPP_MIN_LOG_LEVEL``. A command has to act before the ``quantizeml`` package is
imported, which no module inside the package can do: this module lives beside the package and
imports only the standard library until then.

Unless the user asks for TensorFlow's logs (``--debug`` before the command, or
``TF_CPP_MIN_LOG_LEVEL`` set below 3), it sets ``TF_CPP_MIN_LOG_LEVEL=3`` when unset and imports
the package with fd 2 pointing at /dev/null, then runs :func:`quantizeml.cli.main`. Only the
command does this: ``import quantizeml`` changes no environment variable.
"""
import contextlib
import os
import sys

QUIET_LOG_LEVEL = "3"


def has_debug_flag(argv):
    """Whether ``--debug`` comes among the options before the command (where argparse takes it)."""
    for arg in argv:
        if arg == "--debug":
            return True
        if not arg.startswith("-"):
            return False
    return False


def wants_tensorflow_logs(argv, environ):
    """Whether the user asked for TensorFlow's logs.

    Args:
        argv (list(str)): the command-line arguments (without the program name).
        environ (dict): the environment.

    Returns:
        bool: True with ``--debug`` among the options before the command, or with
        ``TF_CPP_MIN_LOG_LEVEL`` set to anything but 3 (or more).
    """
    if has_debug_flag(argv):
        return True
    level = environ.get("TF_CPP_MIN_LOG_LEVEL")
    if level is None:
        return False
    try:
        return int(level) < int(QUIET_LOG_LEVEL)
    except ValueError:
        return True


@contextlib.contextmanager
def stderr_silenced():
    """Points file descriptor 2 at /dev/null (C++ writes included), restored on exit."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:   # no fd 2 to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv=None):
    """Entry point of the ``quantizeml`` console script. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if wants_tensorflow_logs(argv, os.environ):
            import quantizeml.cli
        else:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LOG_LEVEL)
            with stderr_silenced():
                import quantizeml.cli  # imports tensorflow
    except Exception as e:  # noqa: BLE001 - one line; run again with --debug for the traceback
        if has_debug_flag(argv):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"quantizeml: error: cannot import quantizeml ({message}); run 'quantizeml "
              "--debug ...' for the details", file=sys.stderr)
        return 1
    return quantizeml.cli.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
