"""The API's JSON parser: DRF's, with a body nested too deeply answered as a 400.

Python's JSON decoder recurses once per level of nesting and gives up with
``RecursionError`` at the interpreter's recursion limit, which DRF's parser does
not catch: a body of 20,000 ``[`` was a 500 and a traceback in the log. No
document this API takes comes anywhere near that depth.
"""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
