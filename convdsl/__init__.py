"""convdsl: a small graph compiler for convolutional networks.

Write a network in a ``.conv`` file, have every shape checked, run it::

    import convdsl
    net = convdsl.compile_file("examples/fcn8s.conv")
    outputs = net(net.random_inputs(seed=0))
"""

from convdsl.api import Network, compile_file, compile_string
from convdsl.diagnostics import ConvdslError, Diagnostic, InternalError
from convdsl.interop.onnx_import import compile_onnx, import_onnx

__all__ = [
    "ConvdslError",
    "Diagnostic",
    "InternalError",
    "Network",
    "compile_file",
    "compile_onnx",
    "compile_string",
    "import_onnx",
]
__version__ = "0.1.0"
