"""Other formats in and out of convdsl: ONNX import (a front end writing ``.conv`` text and
weights) and export (a back end over the typed IR), and weights from where users have them
(safetensors files, PyTorch state dicts, Keras layers' arrays in convdsl's layouts).

Every module here imports its optional package (``onnx``, ``safetensors``, ``torch``) only when
used, through ``convdsl.interop.optional``: convdsl imports and runs without them.
"""
