"""Deployment formats beyond the q4asr model file: ONNX for sherpa-onnx
(:mod:`q4asr.export.onnx_graph`) and the runtimes that run it
(:mod:`q4asr.export.sherpa`). See docs/onnx.md."""
