"""KServe v2 / Open Inference Protocol: tensor datatypes and the request/response codec."""
