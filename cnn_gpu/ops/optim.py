"""PLACEHOLDER while the optim op family is being written (replaced in this session)."""


def adam_update(*args, **kwargs):
    raise NotImplementedError('adam_update')


def sgd_update(*args, **kwargs):
    raise NotImplementedError('sgd_update')
