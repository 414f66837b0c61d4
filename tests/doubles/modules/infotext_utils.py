"""Double of modules/infotext_utils.py: how the WebUI writes ``extra_generation_params`` into the
infotext (values with commas, colons or newlines JSON-quoted) and parses it back."""

import json


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
    """``Key: value, Key: "quoted, value"`` → dict; commas inside JSON quotes do not split."""
    fields, current, quoted, escaped = [], "", False, False
    for ch in line:
        if quoted:
            current += ch
            quoted = not (ch == '"' and not escaped)
            escaped = ch == "\\" and not escaped
        elif ch == '"':
            current, quoted, escaped = current + ch, True, False
        elif ch == ",":
            fields.append(current)
            current = ""
        else:
            current += ch
    fields.append(current)
    out = {}
    for field in fields:
        key, sep, value = field.strip().partition(": ")
        if sep:
            out[key] = unquote(value.strip())
    return out
