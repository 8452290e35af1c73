"""(in progress)"""

def to_fully_convolutional(model):
    raise NotImplementedError
