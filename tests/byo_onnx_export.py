"""Export MobileNet (α 0.25) to plain float-input ONNX files WITHOUT xrayfx: Keras + tf2onnx only.

Run as ``python tests/byo_onnx_export.py OUT_DIR WEIGHTS.h5``; writes
``mobilenet-nhwc.onnx`` (float NHWC RGB in [-1, 1] → pooled features) and
``mobilenet-nchw-grey.onnx`` (float NCHW one channel in [-1, 1] → transpose →
repeat the channel → MobileNet → the feature map, NCHW, unpooled). The
normalisation is left outside both graphs, as in encoders exported from torch.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402


def main(out_dir: str, weights: str) -> None:
    size = 224
    pooled = keras.applications.MobileNet(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg", alpha=0.25
    )
    pooled.load_weights(weights)
    fmap = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(size, size, 3), alpha=0.25)
    fmap.load_weights(weights)

    rgb = [tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")]

    @tf.function(input_signature=rgb)
    def nhwc(x):
        return {"features": pooled(x, training=False)}

    grey = [tf.TensorSpec([None, 1, size, size], tf.float32, name="grey")]

    @tf.function(input_signature=grey)
    def nchw_grey(x):
        x = tf.repeat(tf.transpose(x, [0, 2, 3, 1]), 3, axis=3)
        return {"feature_map": tf.transpose(fmap(x, training=False), [0, 3, 1, 2])}

    tf2onnx.convert.from_function(nhwc, input_signature=rgb, opset=17,
                                  output_path=os.path.join(out_dir, "mobilenet-nhwc.onnx"))
    tf2onnx.convert.from_function(nchw_grey, input_signature=grey, opset=17,
                                  output_path=os.path.join(out_dir, "mobilenet-nchw-grey.onnx"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
