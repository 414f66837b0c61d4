"""Double of modules/call_queue.py (A1111 1.10.1, Forge dfdcbab6): ``queue_lock``, the lock every
generation holds (``wrap_gradio_gpu_call`` for the UI, ``Api.queue_lock`` for txt2img/img2img),
a ``modules.fifo_lock.FIFOLock`` there; a plain lock has the same exclusion."""

import threading

queue_lock = threading.Lock()
