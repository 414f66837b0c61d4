"""Parts of ``benchmarks/soak.py``: HTTP and memory sampling (``client``), reference images and
units (``payloads``), the drawn schedule (``plan``), running it (``runner``), the invariants
(``checks``), the table (``report``) and starting a WebUI from its folder (``webui``).

Standard library, numpy and Pillow only (matplotlib for ``--plot``), so the tool runs in a
WebUI's own venv as well as in the test venv.
"""
