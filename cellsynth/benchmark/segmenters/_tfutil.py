"""TensorFlow for the segmenters that use it (stardist, mesmer): imported in the order that keeps
torch working, with its CPU threads set from OMP_NUM_THREADS."""

from __future__ import annotations

import os


def import_tensorflow():
    """Import TensorFlow after torch's compiler stack (which loads Triton's native libraries):
    the other order crashes the process (a segmentation fault when torchvision or torch._dynamo
    loads Triton into a process that already holds TensorFlow), so torch, which every other
    segmenter uses, goes first. Returns the tensorflow module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch  # noqa: F401

    try:
        import torch._dynamo  # noqa: F401  (loads triton where it is installed)
    except Exception:  # noqa: BLE001  (a torch without a working compiler stack)
        pass
    import tensorflow as tf

    return tf


def set_tensorflow_threads(tf):
    """TensorFlow's CPU threads from OMP_NUM_THREADS (that many within an op, one across ops),
    where they can still be set (before TensorFlow starts its thread pools). Returns ``tf``."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
    if threads > 0:
        try:  # only possible before TensorFlow starts its thread pools
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
    return tf
