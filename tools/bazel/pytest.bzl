"""`pytest_tests`: one Bazel py_test per pytest file.

Each target is named after its file without `.py` (`//:tests/tensors/test_fixed_point`) and runs
`pytest <file>` through tools/bazel/pytest_runner.py. One `test_suite` per directory is made as
well (`//:tests/tensors` runs every test file under tests/tensors/).

Tags on every target: `pytest`, plus `slow` for the files listed in `slow`, so that
`bazel test //... --test_tag_filters=-slow` leaves them out. Slow tests *inside* a file are
left out with `--test_env=PYTEST_ADDOPTS="-m 'not slow'"`.
"""

_RUNNER = "//tools/bazel:pytest_runner.py"

def pytest_tests(
        srcs,
        deps = [],
        data = [],
        slow = [],
        size = "large",
        tags = [],
        suites = True,
        **kwargs):
    """Declares one py_test per file of `srcs` and one test_suite per directory.

    Args:
      srcs: the pytest files, usually `glob(["tests/**/test_*.py"])`.
      deps: py_library targets every test needs (the package, conftest.py and helpers).
      data: files every test needs at run time.
      slow: files of `srcs` whose targets get the `slow` tag.
      size: Bazel test size; "large" (15 min timeout) leaves room for importing TensorFlow.
      tags: tags added to every target.
      suites: whether to declare the per-directory test_suites.
      **kwargs: passed to every py_test (timeout, flaky, shard_count, env, ...).
    """
    unknown = [f for f in slow if f not in srcs]
    if unknown:
        fail("pytest_tests expected slow files among srcs. Received: slow={}".format(unknown))

    by_directory = {}
    for src in srcs:
        if not src.endswith(".py"):
            fail("pytest_tests expected .py files. Received: src={}".format(src))
        name = src[:-len(".py")]
        native.py_test(
            name = name,
            srcs = [src, _RUNNER],
            main = _RUNNER,
            args = ["$(rootpath {})".format(src)],
            deps = deps,
            data = data,
            size = size,
            tags = ["pytest"] + tags + (["slow"] if src in slow else []),
            python_version = "PY3",
            srcs_version = "PY3",
            # No __init__.py invented in the runfiles: pytest must see the tree as it is.
            legacy_create_init = False,
            **kwargs
        )
        parts = src.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            directory = "/".join(parts[:i])
            by_directory.setdefault(directory, []).append(":" + name)

    if suites:
        for directory, tests in sorted(by_directory.items()):
            native.test_suite(name = directory, tests = tests)
