"""Placeholder: replaced by the loading module (ppl.models.load)."""


def load(path_or_name, **kwargs):
    raise NotImplementedError("ppl.models.load is not implemented yet")
