"""Bazel entry point of every py_test made by `pytest_tests` (tools/bazel/pytest.bzl).

Runs pytest on the test files given as arguments, from the runfiles tree that Bazel makes the
working directory, so that `import quantizeml` is the package of this checkout and
`tests/conftest.py` and `pytest.ini` apply as with `python3 -m pytest` from the repository root.

Environment read: XML_OUTPUT_FILE (JUnit report for Bazel), TESTBRIDGE_TEST_ONLY
(`bazel test --test_filter=EXPR`, passed as `-k EXPR`), TEST_TMPDIR (scratch space), and
PYTEST_ADDOPTS, which pytest reads itself (`--test_env=PYTEST_ADDOPTS="-m 'not slow'"`).
"""
import os
import shlex
import sys

# pytest's exit code when it collected no test.
_NO_TESTS_COLLECTED = 5


def _pytest_args(files):
    args = [*files, "-p", "no:cacheprovider", "-q", "--rootdir", os.getcwd()]
    if os.path.exists("pytest.ini"):
        args += ["-c", "pytest.ini"]
    if os.environ.get("XML_OUTPUT_FILE"):
        args += ["--junitxml", os.environ["XML_OUTPUT_FILE"]]
    if os.environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    return args


def _is_filtered():
    """True when a -k/-m selection may legitimately leave a file with no test to run."""
    addopts = shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    selects = any(arg.startswith(("-m", "-k")) for arg in addopts)
    return selects or bool(os.environ.get("TESTBRIDGE_TEST_ONLY"))


class _ScratchSpace:
    """pytest plugin: Hypothesis's example database in TEST_TMPDIR, not in the runfiles."""

    def pytest_configure(self, config):
        if not os.environ.get("TEST_TMPDIR"):
            return
        try:
            from hypothesis.configuration import set_hypothesis_home_dir
        except ImportError:
            return
        set_hypothesis_home_dir(os.path.join(os.environ["TEST_TMPDIR"], ".hypothesis"))


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: pytest_runner.py TEST_FILE [TEST_FILE ...]\n")
        return 2
    # Like `python3 -m pytest` from the repository root: the root comes first on sys.path, so
    # `import quantizeml` and `import tests.utils` resolve in this tree, not in an install.
    sys.path.insert(0, os.getcwd())
    # The runfiles tree and HOME are read-only in Bazel's sandbox: caches go to TEST_TMPDIR.
    sys.dont_write_bytecode = True
    if os.environ.get("TEST_TMPDIR"):
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.environ["TEST_TMPDIR"], "matplotlib"))

    import pytest

    code = int(pytest.main(_pytest_args(argv[1:]), plugins=[_ScratchSpace()]))
    if code == _NO_TESTS_COLLECTED and _is_filtered():
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
