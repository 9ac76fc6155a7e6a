"""A repository rule that registers the host's Python as Bazel's Python 3 toolchain.

Bazel must not fall back to a hermetic or a different Python: the tests import tensorflow and
tf_keras from the site-packages of the interpreter the project is installed in. The interpreter
is `$QUANTIZEML_PYTHON` when set, else the `python3` found on PATH when the repository is
fetched. Either is resolved to the real executable (`sys.executable`), so a pyenv shim or a
virtual environment's `bin/python3` is followed to what it runs, and checked to start.
"""

_ENV = "QUANTIZEML_PYTHON"

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
    stub_shebang = "#!/usr/bin/env python3",
)

py_runtime_pair(
    name = "py_runtime_pair",
    py2_runtime = None,
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":py_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _python_interpreter_impl(rctx):
    requested = rctx.os.environ.get(_ENV, "").strip()
    if requested:
        candidate = rctx.path(requested) if "/" in requested else rctx.which(requested)
        origin = "{}={}".format(_ENV, requested)
    else:
        candidate = rctx.which("python3")
        origin = "python3 on PATH"
    if candidate == None or not candidate.exists:
        fail(("quantizeml: no Python interpreter found ({}). Set {} to the absolute path of " +
              "the python3 that has tensorflow installed.").format(origin, _ENV))

    result = rctx.execute([candidate, "-c", "import sys; print(sys.executable)"])
    interpreter = result.stdout.strip()
    if result.return_code != 0 or not interpreter.startswith("/"):
        fail("quantizeml: {} ({}) does not run: {}{}".format(
            candidate,
            origin,
            result.stdout,
            result.stderr,
        ))

    rctx.file("WORKSPACE", "workspace(name = \"{}\")\n".format(rctx.name))
    rctx.file("BUILD", _BUILD.format(interpreter = interpreter))

python_interpreter = repository_rule(
    implementation = _python_interpreter_impl,
    environ = [_ENV, "PATH", "PYENV_VERSION"],
    local = True,
    doc = "Declares a Python 3 toolchain for the interpreter in $QUANTIZEML_PYTHON " +
          "(default: python3 on PATH).",
)
