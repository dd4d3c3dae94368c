"""KServe v2 / Open Inference Protocol: tensor datatypes, request decoding
(request.py, tensors.py) and response encoding (response.py)."""
