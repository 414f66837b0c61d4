"""Test doubles of the AUTOMATIC1111 ``modules`` package (v1.10.1, commit 82a973c).

Each file says which WebUI file it stands in for. Only the names the extension uses exist, with
the WebUI's signatures; behaviour is reduced to what the tests need.
"""
