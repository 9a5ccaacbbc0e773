"""TensorRT engine building (trtexec-style) on datacenter TensorRT 10/11 or TensorRT-RTX.

    from vita_deploy.engines import BuildOptions, build_engine, build_from_manifest, combine_shape_flags
    build_engine("vita_head.onnx", "vita_head.engine",
                 BuildOptions(shapes=combine_shape_flags("frame_queries:1x100x256", "frame_queries:36x100x256",
                                                         "frame_queries:360x100x256")))
    build_from_manifest("exports/tiny/manifest.json")   # every graph, profiles from the manifest
"""
from vita_deploy.engines.backend import Backend, import_tensorrt, load_backend
from vita_deploy.engines.builder import (BuildOptions, build_engine, create_config, network_io, parse_network,
                                         serialize, sidecar_path, write_engine)
from vita_deploy.engines.errors import (BuildInputError, EngineBuildError, ManifestError, OnnxParseError,
                                        ParserMessage, PluginMissingError, PrecisionError, ShapeSpecError,
                                        TensorRTNotInstalledError)
from vita_deploy.engines.manifest import build_from_manifest, read_manifest
from vita_deploy.engines.shapes import ShapeRange, combine_shape_flags, parse_mem_pool_size, parse_shape_spec

__all__ = [
    "Backend", "BuildInputError", "BuildOptions", "EngineBuildError", "ManifestError", "OnnxParseError",
    "ParserMessage", "PluginMissingError", "PrecisionError", "ShapeRange", "ShapeSpecError",
    "TensorRTNotInstalledError", "build_engine", "build_from_manifest", "combine_shape_flags", "create_config",
    "import_tensorrt", "load_backend", "network_io", "parse_mem_pool_size", "parse_network", "parse_shape_spec",
    "read_manifest", "serialize", "sidecar_path", "write_engine",
]
