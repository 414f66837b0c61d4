"""Double of modules/hashes.py ``sha256(filename, title)``: the file's sha256 (the WebUI caches it)."""

import hashlib


def sha256(filename, title, use_addnet_hash=False):
    with open(filename, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
