"""Double of modules/infotext_utils.py: how the WebUI writes ``extra_generation_params`` into the
infotext (values with commas, colons or newlines JSON-quoted) and parses it back (``re_param``)."""

import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    text = str(text)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text


def unquote(text):
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def create_infotext(params):
    return ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)


def parse_generation_parameters(line):
    return {k: unquote(v) for k, v in re_param.findall(line)}
