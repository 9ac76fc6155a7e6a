"""Packaging for quantizeml."""
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "quantizeml", "version.py")) as f:
    exec(f.read(), version)

setup(
    name="quantizeml",
    version=version["__version__"],
    description="TensorFlow-native quantization-aware training and integer deployment "
                "of Keras models",
    long_description=open(os.path.join(here, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["quantizeml", "quantizeml.*"]),
    # the console script starts outside the package, to silence TensorFlow before its import
    py_modules=["quantizeml_launcher"],
    # everything `quantizeml demo` (the README's first command) imports at run time;
    # tests/test_demo.py checks it
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "numpy",
        "onnx",
        "onnxruntime",
        "absl-py",
        "scikit-learn",   # the demo's digits data set (quantizeml.models.zoo)
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
            "hypothesis",
            "scikit-learn",
            "nbclient",
            "nbformat",
            "ipykernel",
            "matplotlib",
        ],
        "examples": ["scikit-learn", "matplotlib"],
        "onnx": ["onnx", "onnxruntime"],
    },
    entry_points={"console_scripts": ["quantizeml=quantizeml_launcher:main"]},
)
