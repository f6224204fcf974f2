"""``fhcnn segment``: segment a whole video from a few labelled frames (one 3D volume).

    from fhcnn.apps.segment import load_video_inputs, segment_video, SegmentConfig
    inputs = load_video_inputs("frames/", "masks/", "0,23,47")
    metrics = segment_video(inputs, SegmentConfig(), out=None)
"""

from .config import DEFAULT_CONFIG, SegmentConfig
from .inputs import VideoInputs, load_video_inputs, parse_frames
from .pipeline import (
                       copy_nearest_baseline,
                       frames_to_volume,
                       held_out_frames,
                       plan_segmentation,
                       score_held_out,
                       segment_command,
                       segment_video,
)

__all__ = ["SegmentConfig", "DEFAULT_CONFIG", "VideoInputs", "load_video_inputs", "parse_frames",
           "segment_video", "segment_command", "plan_segmentation",
           "copy_nearest_baseline", "frames_to_volume", "held_out_frames", "score_held_out"]
