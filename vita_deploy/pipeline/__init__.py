"""The video pipeline, in the order a video flows through it (README "How a video flows through the model"):

video_io (mp4 / frame folder -> frames) -> prefetch (decode and resize in a background thread) -> preprocess
(resize, normalise, pad) -> inference (`run_video`: the graphs per chunk, VITA once, the features kept in a
feature_store or recomputed) -> postprocess (masks, mask scores) -> rle (COCO RLE on the device) -> render (mp4);
timing measures every stage. The graphs are callables, so every backend (eager, ONNX Runtime, TensorRT) runs
this same code. windowed is the live mode: VITA on windows of W frames instead of once, instances linked into
tracks across windows, outputs streamed as each window finishes (README "Live video").
"""
