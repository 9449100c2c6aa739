"""Write tests/fixtures/tiny_ckpt: a small real TensorFlow checkpoint for the reader's tests.

Run with a Python that has TensorFlow (a throwaway venv: python -m venv /tmp/tf &&
/tmp/tf/bin/pip install tensorflow-cpu), from the repository root:
    /tmp/tf/bin/python recipes/make_tiny_checkpoint.py
It saves variables of several dtypes and shapes with TF1's Saver (the format
the musicnn checkpoints use) and their values in expected.npz.
"""

import numpy as np
import tensorflow as tf

tf.compat.v1.disable_eager_execution()
rng = np.random.default_rng(7)
values = {
    "conv/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
    "conv/bias": rng.standard_normal(4).astype(np.float32),
    "scalar": np.float32(3.5),
    "counts": np.arange(10, dtype=np.int64),
    "half": rng.standard_normal((5,)).astype(np.float16),
    "double": rng.standard_normal((2, 3)).astype(np.float64),
}
# many variables so the index has several data blocks
for i in range(300):
    values[f"many/v{i:03d}"] = np.full((2,), i, dtype=np.int32)
variables = [tf.compat.v1.Variable(v, name=k) for k, v in values.items()]
saver = tf.compat.v1.train.Saver()
with tf.compat.v1.Session() as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    saver.save(sess, "tests/fixtures/tiny_ckpt/model", write_meta_graph=False)
np.savez_compressed("tests/fixtures/tiny_ckpt/expected.npz", **{k.replace("/", "|"): v for k, v in values.items()})
print("tensorflow", tf.__version__)
