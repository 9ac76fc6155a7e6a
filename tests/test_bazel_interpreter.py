"""The tests run in the interpreter the project is installed in, under pytest and under Bazel.

Bazel falls back silently to another python3 (Debian's /usr/bin/python3 is 3.11 too, without
tensorflow) when its toolchain is wrong; this file then fails instead of every other one
failing for an unrelated-looking reason, or passing against the wrong package.
"""
import importlib.util
import os
import sys


def test_interpreter_is_python_3_11():
    assert sys.version_info[:2] == (3, 11), sys.executable


def test_interpreter_has_tensorflow_and_tf_keras():
    missing = [name for name in ("tensorflow", "tf_keras") if not importlib.util.find_spec(name)]
    assert not missing, f"{sys.executable} lacks {missing}"


def test_quantizeml_is_this_checkout():
    import quantizeml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert os.path.abspath(quantizeml.__file__) == os.path.join(root, "quantizeml", "__init__.py")
