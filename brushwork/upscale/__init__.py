"""Picture upscalers by A1111 name: Pillow's Lanczos and Nearest, and the super-resolution networks
(ESRGAN, Real-ESRGAN, SwinIR, ... anything spandrel recognises) in the models folder's `ESRGAN/`.

    from brushwork.upscale import NetworkCache, list_upscalers, upscale
    cache = NetworkCache(max_loaded=2)          # owned by the caller; keeps loaded networks
    big = upscale(picture, "4x-UltraSharp", 2, store, cache=cache)        # by a factor
    exact = upscale(picture, "Lanczos", (1920, 1080), store)              # to a size (cover + crop)

Face restoration (GFPGAN/, Codeformer/), as A1111's:

    from brushwork.upscale import FaceNetworkCache, list_face_restorers, restore_faces
    fixed = restore_faces(picture, "GFPGAN", store, visibility=1.0, cache=FaceNetworkCache())
"""

from brushwork.upscale.faces import (
    FaceDetector,
    FaceNetwork,
    FaceNetworkCache,
    FaceRestorer,
    find_face_restorer,
    haar_faces,
    list_face_restorers,
    load_face_network,
    restore_faces,
    restore_with_network,
)
from brushwork.upscale.networks import Network, NetworkCache, load_network
from brushwork.upscale.postprocess import add_postprocess_info, postprocess_fields
from brushwork.upscale.tiles import TileSettings
from brushwork.upscale.upscalers import (
    BUILTIN,
    MAX_SCALE,
    MAX_SIDE,
    Scale,
    SizePlan,
    Upscaler,
    find_upscaler,
    list_upscalers,
    plan_size,
    upscale,
    upscale_with_network,
)

__all__ = [
    "FaceDetector", "FaceNetwork", "FaceNetworkCache", "FaceRestorer", "find_face_restorer", "haar_faces",
    "list_face_restorers", "load_face_network", "restore_faces", "restore_with_network",
    "BUILTIN", "MAX_SCALE", "MAX_SIDE", "Network", "NetworkCache", "Scale", "SizePlan", "TileSettings", "Upscaler",
    "add_postprocess_info", "find_upscaler", "list_upscalers", "load_network", "plan_size", "postprocess_fields",
    "upscale", "upscale_with_network",
]
