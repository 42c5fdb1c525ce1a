"""Lark's own example grammars, as test fixtures.

Copied verbatim from the lark repository (https://github.com/lark-parser/lark, MIT licence):

* ``CONF``: the grammar of ``examples/advanced/conf_lalr.py`` (a toy configuration language
  for LALR's contextual lexer; ``NAME`` and ``VALUE`` overlap, ``VALUE: /./+`` is unbounded).
* ``CSV``: ``examples/advanced/csv.lark`` (rows of words and numbers; every field terminal is
  unbounded).
"""

CONF = r"""
        start: _NL? section+
        section: "[" NAME "]" _NL item+
        item: NAME "=" VALUE? _NL

        NAME: /\w/+
        VALUE: /./+

        %import common.NEWLINE -> _NL
        %import common.WS_INLINE
        %ignore WS_INLINE
    """

CSV = r"""start: header _NL row+
header: "#" " "? (WORD _SEPARATOR?)+
row: (_anything _SEPARATOR?)+ _NL
_anything: INT | WORD | /[a-zA-z.;\\\/]+/ | FLOAT | SIGNED_FLOAT

_SEPARATOR: /[  ]+/
          | "\t"
          | ","

%import common.NEWLINE -> _NL
%import common.WORD
%import common.INT
%import common.FLOAT
%import common.SIGNED_FLOAT
"""
