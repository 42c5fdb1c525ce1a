"""The example gallery, installed with the library as ``ppl.examples``.

``ppl examples`` lists them and ``ppl run NAME`` runs one by name; in a checkout each file
also runs as ``python examples/NAME.py`` (see docs/gallery.md).
"""
