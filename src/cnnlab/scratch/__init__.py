"""cnnlab.scratch: a NumPy reference of the building blocks of CNNs, each layer a
`forward(x, ...) -> (out, cache)` and a `backward(dout, cache) -> gradients` written by hand,
checked against finite differences (gradcheck.py) and against PyTorch."""
