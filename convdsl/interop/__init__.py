"""Other formats in and out: ONNX import and export, weights in other frameworks' layouts.

Each module here is a front end or a back end over the same IR and ``.conv`` text as the rest
of convdsl. The ``onnx`` package is an optional dependency, imported only when used.
"""
