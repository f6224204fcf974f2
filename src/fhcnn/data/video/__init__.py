"""Video and mask readers/writers, and a synthetic video generator with ground truth.

Readers (``read_video``): a folder of numbered frames (JPEG/PNG/BMP/TIFF, sorted by the number
in the name; the DAVIS layout ``JPEGImages/480p/<seq>/00000.jpg`` is found from the dataset
root or the sequence folder), a GIF, an MP4/AVI/MOV/MKV/WEBM (imageio with its ffmpeg plugin:
``pip install fhcnn[io]``), or a ``.npy`` array ``(T, H, W, 3)`` / ``(T, H, W)``.

Masks (``read_masks``): a folder of PNG masks named like the frames (DAVIS ``Annotations``:
palette indices, 0 = background, any other value (e.g. 255 or object indices) an object); it
may hold every frame or only some; or a ``.npy`` ``(T, H, W)`` label array. Mask *values*
are mapped to classes ``0..K-1`` by :func:`mask_classes` (0 stays background).

The package holds one idea per module:

* :mod:`~fhcnn.data.video.image_files`: a folder's numbered images (their order, the DAVIS
  layout, the checks of their names) and the opening of one image file (:func:`open_image`);
* :mod:`~fhcnn.data.video.frames`: reading videos (:func:`open_video`, :class:`VideoFrames`,
  :func:`read_video`) and frames of any bit depth to [0, 1] or 8-bit RGB;
* :mod:`~fhcnn.data.video.masks`: reading and checking masks (:func:`read_masks`,
  :class:`MaskSet`, :func:`check_mask_encodings`) and their values as classes;
* :mod:`~fhcnn.data.video.palette`: writing masks as DAVIS palette PNGs (:func:`write_mask_png`);
* :mod:`~fhcnn.data.video.synthetic`: the synthetic video with ground truth (:func:`generate_video`).
"""

from .frames import VideoFrames, frames_for_display, frames_to_unit, open_video, read_video
from .frames import _read_frame as _read_frame  # tests read one frame file
from .frames import _sequential as _sequential  # tests decode frames in order
from .image_files import open_image, open_label_image, pil_high_depth
from .masks import (
                    COLOUR_CODE_OFFSET,
                    MaskSet,
                    apply_classes,
                    check_mask_encodings,
                    distinct_values,
                    mask_classes,
                    read_masks,
)
from .palette import davis_palette, write_mask_png
from .synthetic import generate_video

__all__ = ["read_video", "open_video", "VideoFrames", "frames_to_unit", "frames_for_display",
           "read_masks", "MaskSet", "distinct_values",
           "check_mask_encodings", "mask_classes", "apply_classes", "davis_palette", "write_mask_png",
           "generate_video", "open_image", "open_label_image", "pil_high_depth", "COLOUR_CODE_OFFSET"]
