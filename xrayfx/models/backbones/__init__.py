"""Backbones written in Keras by xrayfx itself (those not in keras.applications)."""
