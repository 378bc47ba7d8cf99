"""PLACEHOLDER while the pool op family is being written (replaced in this session)."""


def avg_pool2d(*args, **kwargs):
    raise NotImplementedError('avg_pool2d')


def avg_pool2d_backward(*args, **kwargs):
    raise NotImplementedError('avg_pool2d_backward')


def max_pool2d(*args, **kwargs):
    raise NotImplementedError('max_pool2d')


def max_pool2d_backward(*args, **kwargs):
    raise NotImplementedError('max_pool2d_backward')


def sum_pool2d(*args, **kwargs):
    raise NotImplementedError('sum_pool2d')


def sum_pool2d_backward(*args, **kwargs):
    raise NotImplementedError('sum_pool2d_backward')
